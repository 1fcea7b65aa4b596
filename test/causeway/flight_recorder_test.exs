defmodule Causeway.FlightRecorderTest do
  # The flight recorder (issue 14 item 3): persist: {:on_trigger, opts}
  # keeps a sliding window in native memory and writes it only when a
  # trigger fires.
  use Causeway.Case, async: false

  defmodule Pricing do
    # what a steady background load runs: instrumented, never failing
    use Causeway.Instrument

    def quote(sku, qty), do: %{sku: sku, qty: qty, total: price(sku) * qty}
    def price(sku), do: rem(:erlang.phash2(sku), 97) + 1
    # not a tail call: an instrumented call ends when its body's last call
    # begins (tail calls keep their constant stack)
    def slow(ms) do
      Process.sleep(ms)
      :ok
    end
  end

  # A loop calling Pricing.quote/2 every `every_ms` until told to stop; it
  # answers with the wall times (ns) of its calls.
  defp load(every_ms) do
    spawn_link(fn -> load_loop(every_ms, 0, []) end)
  end

  defp load_loop(every_ms, n, times) do
    receive do
      {:stop, from} -> send(from, {:times, self(), Enum.reverse(times)})
    after
      every_ms ->
        t = System.os_time(:nanosecond)
        Pricing.quote("sku-#{rem(n, 50)}", n)
        load_loop(every_ms, n + 1, [t | times])
    end
  end

  defp stop_load(pid) do
    send(pid, {:stop, self()})
    assert_receive {:times, ^pid, times}, 5_000
    times
  end

  defp on_disk, do: Causeway.events(limit: :infinity)

  defp ns(%DateTime{} = t), do: DateTime.to_unix(t, :nanosecond)

  # A process that raises once it is told to; its exit is recorded by a
  # process trace (:procs), as for any unmodified code.
  defp crasher do
    pid =
      spawn(fn ->
        receive do
          :crash -> raise ArgumentError, "bad cart"
        end
      end)

    {:ok, t} = Causeway.trace(pid, what: [:procs, :receive])
    {pid, t}
  end

  test "while nothing fires the disk sees no event writes, and memory is the window's" do
    start_causeway!(persist: {:on_trigger, window_ms: 10_000, after_ms: 100})
    before = Causeway.metrics().storage_bytes
    l = load(1)
    Process.sleep(400)
    stop_load(l)
    flush!()

    assert on_disk() == []
    assert Causeway.incidents() == []
    m = Causeway.metrics()
    assert m.flight.window_events > 100
    assert m.flight.incidents == 0 and m.flight.persisted == 0
    assert m.storage_bytes == before
    assert m.native_memory >= m.flight.window_bytes
  end

  test "a crash under steady load persists exactly its window and the after-phase" do
    window = 300
    start_causeway!(persist: {:on_trigger, window_ms: window, after_ms: 200})
    :ok = Causeway.subscribe(:incident)
    l = load(2)
    # the window slides for a while before anything happens
    Process.sleep(window * 3)
    {victim, _t} = crasher()
    Process.sleep(20)
    send(victim, :crash)
    Process.sleep(400)
    times = stop_load(l)
    flush!()

    assert_receive {:causeway, :incident, %Causeway.Incident{trigger: :exit} = inc}, 2_000
    # the record on disk is the one sent, grown by the after-phase
    assert [%{id: id, trigger: :exit, trigger_event: te, first_id: first}] = Causeway.incidents()
    assert {id, te, first} == {inc.id, inc.trigger_event, inc.first_id}

    [exit] = Causeway.events(pid: victim, type: :process_exit)
    assert inc.trigger_event == exit.id
    assert inc.detail =~ "abnormal exit"
    crash_ns = ns(exit.wall_time)
    cutoff = crash_ns - window * 1_000_000

    evs = on_disk()
    # nothing before the window
    assert Enum.all?(evs, &(ns(&1.wall_time) >= cutoff - 1_000))
    # everything of the load inside the window (a margin for the capture
    # clock vs os_time), and calls of the after-phase
    quotes = for e <- evs, e.type == :function_entry, e.function == :quote, do: ns(e.wall_time)
    inside = Enum.filter(times, &(&1 > cutoff + 5_000_000 and &1 < crash_ns - 5_000_000))
    assert length(inside) > 20
    assert Enum.count(quotes, &(&1 < crash_ns)) >= length(inside)
    assert Enum.any?(quotes, &(&1 > crash_ns))
    # and no load older than the window, though it ran three windows before
    assert Enum.count(times, &(&1 < cutoff - 5_000_000)) > 100

    # the incident's events are what a query limited to it returns
    assert Causeway.events(incident: inc.id, limit: :infinity) |> length() == length(evs)
    assert Causeway.state_history(l, incident: inc.id) == []
    [final] = Causeway.incidents()
    assert final.events == length(evs)
    assert Causeway.metrics().flight.expired > 0
  end

  test "with cone: true only the crash's causal cone and its process are kept" do
    start_causeway!(persist: {:on_trigger, window_ms: 5_000, after_ms: 100, cone: true})
    l = load(2)
    {victim, _t} = crasher()
    # a client whose message makes the victim crash, traced too
    client =
      spawn(fn ->
        receive do
          :go -> send(victim, :crash)
        end

        Process.sleep(:infinity)
      end)

    {:ok, _} = Causeway.trace(client, what: [:send, :receive])
    Process.sleep(200)
    send(client, :go)
    Process.sleep(300)
    stop_load(l)
    flush!()

    evs = on_disk()
    assert [%Causeway.Incident{cone: true, trigger: :exit}] = Causeway.incidents()
    pids = evs |> Enum.map(& &1.pid) |> Enum.uniq()
    assert victim in pids
    # the client's send to the victim is in the cone (receive -> send), the
    # load process is not
    assert Enum.any?(evs, &(&1.pid == client and &1.type == :message_send))
    refute l in pids
    assert Causeway.metrics().flight.window_events > 50
    Process.exit(client, :kill)
  end

  test "snapshots, slow calls and errors fire; :always refuses a snapshot" do
    start_causeway!(persist: {:on_trigger, window_ms: 5_000, after_ms: 0, slow_call_ms: 40})
    for i <- 1..10, do: Pricing.quote("a", i)
    flush!()

    assert {:ok, %Causeway.Incident{trigger: :snapshot, detail: "deploy 42", events: n} = s} =
             Causeway.snapshot("deploy 42")

    assert n >= 20 and s.trigger_event == nil
    assert length(on_disk()) == n
    assert inspect(s) =~ "#Causeway.Incident<#{s.id} snapshot"

    Pricing.slow(60)
    flush!()
    assert [_, %Causeway.Incident{trigger: :slow_call, detail: detail}] = Causeway.incidents()
    assert detail =~ "slow/1 took"

    Causeway.Runtime.error(:error, %RuntimeError{message: "x"}, [])
    flush!()
    assert [_, _, %Causeway.Incident{trigger: :error}] = Causeway.incidents()
    stop_causeway!()

    start_causeway!()

    assert {:error, %Causeway.Error{kind: :invalid_argument, message: msg}} =
             Causeway.snapshot(:now)

    assert msg =~ "on_trigger"
  end

  test "a message that waited in a mailbox past queue_wait_ms fires" do
    start_causeway!(persist: {:on_trigger, window_ms: 5_000, after_ms: 0, queue_wait_ms: 50})
    alias Causeway.Runtime

    # a worker busy with one job while the next waits in its mailbox;
    # Runtime.message_receive/2 records when the message is taken
    worker =
      spawn(fn ->
        for _ <- 1..2 do
          receive do
            {:job, from, n} = msg ->
              Runtime.message_receive(from, msg)
              Process.sleep(if n == 1, do: 120, else: 0)
          end
        end
      end)

    for n <- 1..2 do
      msg = {:job, self(), n}
      Runtime.message_send(worker, msg)
      send(worker, msg)
    end

    Process.sleep(300)
    flush!()
    assert [%Causeway.Incident{trigger: :queue_wait, detail: detail} = inc] = Causeway.incidents()
    assert detail =~ ~r/a message waited \d+ ms/

    [recv] =
      Causeway.events(pid: worker, type: :message_receive, limit: :infinity) |> Enum.take(-1)

    assert inc.trigger_event == recv.id
  end

  test ":telemetry events named in the options fire a snapshot" do
    refute Code.ensure_loaded?(:telemetry)

    Causeway.Test.FakeTelemetry.install()

    try do
      start_causeway!(persist: {:on_trigger, after_ms: 0, telemetry: [[:repo, :query, :slow]]})
      :ok = Causeway.subscribe(:incident)
      for i <- 1..5, do: Pricing.quote("a", i)
      flush!()
      apply(:telemetry, :execute, [[:repo, :query, :other], %{}, %{}])
      apply(:telemetry, :execute, [[:repo, :query, :slow], %{ms: 900}, %{}])
      assert_receive {:causeway, :incident, %Causeway.Incident{trigger: :telemetry} = inc}, 5_000
      assert inc.detail == "[:repo, :query, :slow]"
      assert inc.events >= 10
      stop_causeway!()
      assert [] == Causeway.Test.FakeTelemetry.attached()
    after
      Causeway.Test.FakeTelemetry.uninstall()
    end
  end

  test "memory stays within the window's cap at 10x overload, every event counted" do
    cap = 1024 * 1024

    start_causeway!(
      persist: {:on_trigger, window_ms: 60_000, max_bytes: cap, after_ms: 0},
      ring_size: 4096
    )

    blob = :binary.copy("x", 1_500)

    producers =
      for _ <- 1..2 do
        Task.async(fn ->
          for i <- 1..20_000, do: Causeway.Runtime.state_change(i, {i, blob})
        end)
      end

    Enum.each(producers, &Task.await(&1, 60_000))
    flush!()
    m = Causeway.metrics()
    f = m.flight
    assert f.window_bytes <= cap
    assert f.evicted > 0
    # every event produced is in the window, aged out, pushed out by the
    # cap, written by an incident or dropped (and counted) before it
    assert m.produced == f.window_events + f.expired + f.evicted + f.persisted + m.dropped_total
    assert on_disk() == []
  end

  test "bad persist options are ArgumentErrors naming the option" do
    for {opt, msg} <- [
          {:sometimes, ":persist must be :always or {:on_trigger, opts}"},
          {{:on_trigger, window_ms: 0}, ":window_ms must be an integer in 1..86400000"},
          {{:on_trigger, bogus: 1}, "unknown option :bogus"},
          {{:on_trigger, cone: :yes}, ":cone must be a boolean"},
          {{:on_trigger, max_bytes: 10}, ":max_bytes must be an integer"},
          {{:on_trigger, telemetry: [[:my, :event]]}, ":telemetry triggers need"},
          {{:on_trigger, telemetry: [:not_a_name]}, ":telemetry must be a list of event names"}
        ] do
      assert_raise ArgumentError, ~r/#{Regex.escape(msg)}/, fn ->
        Causeway.start_link(dir: tmp_dir!(), persist: opt)
      end
    end

    start_causeway!(persist: {:on_trigger, []})
    assert_raise ArgumentError, ~r/no incident 7/, fn -> Causeway.events(incident: 7) end
    assert_raise ArgumentError, ~r/:incident must be/, fn -> Causeway.events(incident: :x) end
  end
end
