defmodule Causeway.WatchTest do
  # Causeway.watch/2 (issue 14 item 1): unmodified OTP processes watched
  # through :sys debug hooks.
  use Causeway.Case, async: false

  defmodule Cart do
    # plain GenServer: no Causeway.Instrument
    use GenServer

    def start_link(name \\ nil),
      do: GenServer.start_link(__MODULE__, %{items: [], total: 0}, name: name)

    def add(c, item, price), do: GenServer.call(c, {:add, item, price})
    def note(c, text), do: GenServer.cast(c, {:note, text})
    def peek(c), do: GenServer.call(c, :peek)

    @impl true
    def init(s), do: {:ok, s}

    @impl true
    def handle_call({:add, item, price}, _from, s) do
      s = %{s | items: [item | s.items], total: s.total + price}
      {:reply, {:ok, s.total}, s}
    end

    def handle_call(:peek, _from, s), do: {:reply, s, s}

    def handle_call(:block, _from, s) do
      Process.sleep(:infinity)
      {:reply, :ok, s}
    end

    @impl true
    def handle_cast({:note, text}, s), do: {:noreply, Map.put(s, :note, text)}

    @impl true
    def handle_info(:tick, s), do: {:noreply, Map.update(s, :ticks, 1, &(&1 + 1))}
  end

  defmodule Door do
    @behaviour :gen_statem
    def start_link, do: :gen_statem.start_link(__MODULE__, 0, [])
    @impl true
    def callback_mode, do: :state_functions
    @impl true
    def init(n), do: {:ok, :closed, n}
    def closed(:cast, :open, n), do: {:next_state, :open, n + 1}
    def closed({:call, from}, :state, n), do: {:keep_state, n, [{:reply, from, :closed}]}
    def open(:cast, :close, n), do: {:next_state, :closed, n + 1}
    def open(:cast, :open, n), do: {:keep_state, n}
  end

  defp causeway_hooks(pid) do
    {:status, _, _, [_pdict, _sys, _parent, dbg | _]} = :sys.get_status(pid)
    Enum.filter(dbg, &(inspect(&1) =~ "Causeway.Watch"))
  end

  setup do
    start_causeway!()
    :ok
  end

  test "a plain GenServer's states, time travel, causes and replies" do
    {:ok, cart} = Cart.start_link()
    {:ok, w} = Causeway.watch(cart)
    assert w.pid == cart
    t0 = vm_now()
    Process.sleep(5)
    assert {:ok, 3} = Cart.add(cart, :apple, 3)
    Process.sleep(5)
    t1 = vm_now()
    Process.sleep(5)
    Cart.note(cart, "gift")
    assert {:ok, 10} = Cart.add(cart, :pear, 7)
    # a message that changes nothing records no state change
    Cart.peek(cart)
    send(cart, :tick)
    Cart.peek(cart)
    flush!()

    history = Causeway.state_history(cart)

    assert Enum.map(history, & &1.data.new) == [
             %{items: [], total: 0},
             %{items: [:apple], total: 3},
             %{items: [:apple], total: 3, note: "gift"},
             %{items: [:pear, :apple], total: 10, note: "gift"},
             %{items: [:pear, :apple], total: 10, note: "gift", ticks: 1}
           ]

    assert Enum.all?(history, &(&1.source == :watch))
    assert {:ok, %{items: [], total: 0}, _} = Causeway.state_at(cart, t0)
    assert {:ok, %{items: [:apple], total: 3}, _} = Causeway.state_at(cart, t1)

    # the state change after the first call is caused by the call's request,
    # whose sender is the test process
    [_, after_apple | _] = history
    chain = Causeway.causal_chain(after_apple.id)
    assert [{%{type: :state_change}, _}, {%{type: :message_receive} = rcv, _} | _] = chain
    assert rcv.data == %{from: self(), message: {:add, :apple, 3}}

    receives = Causeway.events(pid: cart, type: :message_receive)

    assert Enum.map(receives, & &1.data.message) ==
             [{:add, :apple, 3}, {:note, "gift"}, {:add, :pear, 7}, :peek, :tick, :peek]

    replies = Causeway.events(pid: cart, type: :message_send)
    assert [{:ok, 3}, {:ok, 10}, %{total: 10}, %{ticks: 1}] = Enum.map(replies, & &1.data.message)
    assert Enum.map(replies, & &1.data.to) |> Enum.uniq() == [self()]

    :ok = Causeway.unwatch(w)
    assert causeway_hooks(cart) == []
  end

  test "a registered name, and the hook goes when the owner dies or a limit trips" do
    {:ok, cart} = Cart.start_link(:watched_cart)

    owner =
      spawn(fn ->
        {:ok, _w} = Causeway.watch(:watched_cart)
        receive do: (:stop -> :ok)
      end)

    wait_until(fn -> causeway_hooks(cart) != [] end)
    send(owner, :stop)
    wait_until(fn -> causeway_hooks(cart) == [] end)

    {:ok, _w} = Causeway.watch(cart, max_events: 4)
    for i <- 1..5, do: Cart.add(cart, i, i)
    assert_receive {:causeway_watch, _, {:stopped, :max_events}}, 2_000
    assert causeway_hooks(cart) == []
  end

  test "the hook goes when the instance stops, and when the watched process dies" do
    {:ok, cart} = Cart.start_link()
    {:ok, w} = Causeway.watch(cart)
    assert causeway_hooks(cart) != []
    stop_causeway!()
    wait_until(fn -> causeway_hooks(cart) == [] end)
    refute Process.alive?(w.session)

    start_causeway!()
    {:ok, w} = Causeway.watch(cart)
    Process.unlink(cart)
    GenServer.stop(cart)
    wait_until(fn -> not Process.alive?(w.session) end)
  end

  test "a process that handles no system messages, or is blocked, is an error in bounded time" do
    plain = spawn(fn -> receive do: (:never -> :ok) end)
    {t, r} = :timer.tc(fn -> Causeway.watch(plain, timeout: 300) end)
    assert {:error, %Causeway.Error{kind: :timeout, message: msg}} = r
    assert msg =~ "not an OTP process"
    assert t < 2_000_000

    {:ok, cart} = Cart.start_link()
    spawn(fn -> GenServer.call(cart, :block, :infinity) end)
    Process.sleep(50)
    assert {:error, %Causeway.Error{kind: :timeout}} = Causeway.watch(cart, timeout: 300)

    assert {:error, %Causeway.Error{kind: :not_found}} = Causeway.watch(:no_such_name)
    assert_raise ArgumentError, ~r/:max_events/, fn -> Causeway.watch(self(), max_events: 0) end
    assert_raise ArgumentError, ~r/:bogus/, fn -> Causeway.watch(self(), bogus: 1) end
    assert_raise ArgumentError, ~r/watch\/2 expects/, fn -> Causeway.watch("cart") end
  end

  test "a gen_statem: its events and its state names" do
    {:ok, door} = Door.start_link()
    {:ok, w} = Causeway.watch(door)
    :gen_statem.cast(door, :open)
    :gen_statem.cast(door, :open)
    :gen_statem.cast(door, :close)
    assert :closed = :gen_statem.call(door, :state)
    flush!()

    assert Causeway.state_history(door) |> Enum.map(&{&1.data.old, &1.data.new}) ==
             [{nil, :closed}, {:closed, :open}, {:open, :closed}]

    assert Causeway.events(pid: door, type: :message_receive) |> Enum.map(& &1.data.message) ==
             [{:cast, :open}, {:cast, :open}, {:cast, :close}, {:call, :state}]

    Causeway.unwatch(w)
    assert causeway_hooks(door) == []
  end

  test "targets by {:via, ...} and {name, node}; duration_ms; the chain to a traced caller; exports" do
    {:ok, _} = Registry.start_link(keys: :unique, name: WatchReg)
    {:ok, cart} = Cart.start_link({:via, Registry, {WatchReg, :cart}})
    {:ok, w} = Causeway.watch({:via, Registry, {WatchReg, :cart}})
    assert w.pid == cart
    :ok = Causeway.unwatch(w)
    Process.register(cart, :named_cart)
    {:ok, w} = Causeway.watch({:named_cart, node()}, duration_ms: 300)

    # a caller whose sends are traced: the chain goes state change <- the
    # request it handled <- the caller's send
    caller =
      spawn(fn ->
        receive do: (:go -> Cart.add(:named_cart, :plum, 4))
        receive do: (:never -> :ok)
      end)

    {:ok, t} = Causeway.trace(caller, what: [:send])
    send(caller, :go)
    wait_until(fn -> match?(%{total: 4}, Cart.peek(cart)) end)
    flush!()
    # two watches, each starting from the state it found
    [_, _, changed] = Causeway.state_history(cart)
    chain = Causeway.causal_chain(changed.id) |> Enum.map(fn {e, _} -> {e.type, e.pid} end)

    assert [{:state_change, ^cart}, {:message_receive, ^cart}, {:message_send, ^caller} | _] =
             chain

    Causeway.stop_trace(t)

    # exported as for instrumented code: slices of its handled messages
    # and the state changes, in a Chrome trace; a Mermaid flow to the caller
    path = Path.join(tmp_dir!("watch-export"), "cart.json")
    File.mkdir_p!(Path.dirname(path))
    {:ok, %{events: n}} = Causeway.Export.chrome_trace(path, pid: cart)
    assert n >= 4
    assert File.read!(path) =~ "plum"
    assert Causeway.Export.mermaid_text(pids: [caller, cart]) =~ "plum"

    assert_receive {:causeway_watch, _, {:stopped, :duration_ms}}, 2_000
    assert causeway_hooks(cart) == []
    _ = w
    Process.exit(caller, :kill)
  end

  defmodule Tally do
    # a plain gen_event handler
    @behaviour :gen_event
    @impl true
    def init(n), do: {:ok, n}
    @impl true
    def handle_event({:add, k}, n), do: {:ok, n + k}
    @impl true
    def handle_call(:get, n), do: {:ok, n, n}
  end

  test "a gen_event manager: every event it handles, and its handlers when the watch starts" do
    {:ok, m} = :gen_event.start_link()
    :ok = :gen_event.add_handler(m, Tally, 0)
    {:ok, w} = Causeway.watch(m)
    :gen_event.notify(m, {:add, 2})
    :ok = :gen_event.sync_notify(m, {:add, 3})
    assert 5 == :gen_event.call(m, Tally, :get)
    flush!()

    got = Causeway.events(pid: m, type: :message_receive) |> Enum.map(& &1.data.message)

    assert [{:notify, {:add, 2}}, {_, _, {:sync_notify, {:add, 3}}}, {_, _, {:call, Tally, :get}}] =
             got

    # gen_event's hook carries no state: what is recorded is the handlers'
    # states when the watch started
    assert [%{data: %{old: nil, new: {Tally, false, 0}}}] = Causeway.state_history(m)
    Causeway.unwatch(w)
    assert causeway_hooks(m) == []
  end

  defp wait_until(f, n \\ 100) do
    cond do
      f.() -> :ok
      n == 0 -> flunk("condition not reached")
      true -> Process.sleep(20) && wait_until(f, n - 1)
    end
  end
end
