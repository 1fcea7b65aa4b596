defmodule Causeway.RuntimeTest do
  use Causeway.Case, async: false

  alias Causeway.Runtime

  test "every runtime function records its event with the right shape" do
    start_causeway!()
    me = self()
    child = spawn(fn -> :ok end)
    id = Runtime.function_entry(M, :f, [1])
    Runtime.message_send(child, {:hello, 1})
    Runtime.message_receive({:reply, 2})
    Runtime.message_receive(child, {:reply, 3})
    Runtime.state_change(%{a: 1}, %{a: 2})
    Runtime.process_spawn(child)
    Runtime.error(:throw, :oops, [{M, :f, 1, []}])
    Runtime.function_exit(id, :ok)
    Runtime.process_exit(child, :normal)
    flush!()

    [entry, send, r1, r2, sc, spawn, err, exit] = Causeway.events(pid: me)
    assert entry.type == :function_entry
    assert send.data == %{to: child, message: {:hello, 1}}
    assert send.parent_id == id
    assert r1.data == %{from: nil, message: {:reply, 2}}
    assert r2.data == %{from: child, message: {:reply, 3}}
    assert sc.data == %{old: %{a: 1}, new: %{a: 2}}
    assert sc.parent_id == r2.id, "state change caused by the message being handled"
    assert spawn.data == %{child: child}
    assert err.data == %{kind: :throw, reason: :oops, stacktrace: [{M, :f, 1, []}]}
    assert err.parent_id == id
    assert exit.type == :function_exit
    [pexit] = Causeway.events(pid: child)
    assert pexit.type == :process_exit and pexit.data == %{reason: :normal}
    assert {:exit_of, spawn.id} in pexit.links
    # ids are time-ordered and unique
    ids = Enum.map([entry, send, r1, r2, sc, spawn, err, exit], & &1.id)
    assert ids == Enum.sort(ids) and ids == Enum.uniq(ids)
  end

  test "the process tree: spawns under their parent, with their exits" do
    start_causeway!()
    parent = self()

    child =
      spawn(fn ->
        grandchild = spawn(fn -> receive do: (:bye -> :ok) end)
        Runtime.process_spawn(grandchild)
        send(parent, {:grandchild, grandchild})
        receive do: (:bye -> :ok)
        Runtime.process_exit(self(), :normal)
      end)

    Runtime.process_spawn(child)
    assert_receive {:grandchild, gc}
    send(child, :bye)
    send(gc, :bye)
    Process.sleep(20)
    Runtime.process_exit(gc, :killed)
    flush!()

    tree = Causeway.process_tree(self())

    assert [
             %{
               pid: ^child,
               exit: %{data: %{reason: :normal}},
               children: [%{pid: ^gc, exit: gexit}]
             }
           ] = tree.children

    assert gexit.data.reason == :killed
    assert {:exit_of, hd(tree.children).spawned.id} in hd(tree.children).exit.links
  end

  test "concurrent producers on every scheduler: exact counts" do
    start_causeway!(ring_size: 65_536)
    scheds = System.schedulers_online()
    per = 3_000

    Enum.map(1..(scheds * 4), fn p ->
      Task.async(fn ->
        for i <- 1..per, do: Runtime.state_change(p, i)
      end)
    end)
    |> Task.await_many(60_000)

    flush!()
    m = Causeway.metrics()
    total = scheds * 4 * per
    assert m.produced == total
    assert m.persisted == total
    assert Enum.sum(Enum.map(m.rings, & &1.written)) == total
    assert length(Causeway.events(type: :state_change, limit: :infinity, links: false)) == total
  end

  test "large terms are truncated to the byte and depth budget" do
    start_causeway!(max_term_bytes: 256, max_depth: 4)
    big = :binary.copy("x", 10_000)
    Runtime.state_change(nil, big)
    Runtime.state_change(nil, Enum.to_list(1..10_000))
    Runtime.state_change(nil, Map.new(1..1_000, &{&1, &1}))
    Runtime.state_change(nil, {:a, {:b, {:c, {:d, {:e, {:f}}}}}})
    Runtime.state_change(nil, List.to_tuple(Enum.to_list(1..10_000)))
    Runtime.state_change(nil, "small")
    flush!()

    [b, l, m, d, t, s] =
      Causeway.events(pid: self(), type: :state_change) |> Enum.map(& &1.data.new)

    assert b == {:truncated, 10_000}
    {proper, tail} = split_improper(l)
    assert length(proper) < 200
    assert tail == {:truncated, :max_bytes}
    assert proper == Enum.to_list(1..length(proper))
    assert map_size(m) < 200 and m[{:truncated, :max_bytes}] == :more
    assert {:a, {:b, {:c, {:d, {:truncated, :max_depth}}}}} = d
    assert tuple_size(t) < 200 and elem(t, tuple_size(t) - 1) == {:truncated, :max_bytes}
    assert s == "small"
  end

  test "the depth budget and redaction hold for small arguments and results" do
    start_causeway!(max_depth: 1, redact: [:password])
    id = Runtime.function_entry(M, :f, [[1], {:password, "x"}, {:user, [2]}, 3])
    Runtime.function_exit(id, {:ok, [1]})
    flush!()

    assert Causeway.event(id).data == [
             [1],
             {:password, :redacted},
             {:user, {:truncated, :max_depth}},
             3
           ]

    [exit] = Causeway.events(type: :function_exit, call_id: id)
    assert exit.data == {:ok, {:truncated, :max_depth}}
  end

  test "with a large byte budget, events are made first and copied into the ring" do
    start_causeway!(max_term_bytes: 100_000)
    big = :binary.copy("q", 50_000)
    id = Runtime.function_entry(M, :f, [1, big])
    Runtime.function_exit(id, {:ok, big})
    Runtime.state_change(:old, [big])
    flush!()
    assert Causeway.event(id).data == [1, big]
    [exit] = Causeway.events(type: :function_exit, call_id: id)
    assert exit.data == {:ok, big}
    [change] = Causeway.events(pid: self(), type: :state_change)
    assert change.data.new == [big]
  end

  test "the smallest byte budget holds for arguments and results" do
    start_causeway!(max_term_bytes: 64)
    id = Runtime.function_entry(M, :f, [1, :binary.copy("x", 60), :binary.copy("w", 20)])
    Runtime.function_exit(id, :binary.copy("y", 60))
    flush!()
    assert Causeway.event(id).data == [1, {:truncated, 60}, :binary.copy("w", 20)]
    [exit] = Causeway.events(type: :function_exit, call_id: id)
    assert exit.data == {:truncated, 60}

    # arguments cut short by the budget: the call keeps its arity
    big = Enum.to_list(1..100)
    id = Runtime.function_entry(M, :g, [big, 2, 3])
    Runtime.function_exit(id, :ok)
    flush!()
    entry = Causeway.event(id)
    assert {entry.function, entry.arity} == {:g, 3}
    assert [[_ | _] | _] = entry.data
    [exit] = Causeway.events(type: :function_exit, call_id: id)
    assert exit.arity == 3
  end

  test "a fun is captured by name, never with its environment" do
    start_causeway!()
    big = Map.new(1..200_000, &{&1, &1})
    closure = fn -> map_size(big) end
    id = Runtime.function_entry(M, :run, [closure, &Enum.map/2])
    Runtime.function_exit(id, closure)
    flush!()
    [entry, exit] = Causeway.events(pid: self())
    assert [{:fun, local}, {:fun, external}] = entry.data
    assert local =~ "#Fun<" and byte_size(local) <= 200
    assert external =~ "Enum" and external =~ "map"
    assert {:fun, ^local} = exit.data
  end

  defp split_improper(list, acc \\ [])
  defp split_improper([h | t], acc), do: split_improper(t, [h | acc])
  defp split_improper(tail, acc), do: {Enum.reverse(acc), tail}

  test "integers and lists of every shape are stored exactly" do
    start_causeway!()
    # on this 64-bit VM the encoder reads these from their term words
    assert %{direct_term_words: true, clock: clock} = Causeway.metrics().capture_path
    assert clock in [:tsc, :os]

    edge = 2 ** 59

    terms = [
      [0, 1, -1, 255, 256, -256, 2 ** 31 - 1, -(2 ** 31), 2 ** 31, -(2 ** 31) - 1],
      [edge - 1, -edge, edge, -edge - 1, 2 ** 64, -(2 ** 64)],
      [],
      [[]],
      [[], [[1]], [2 | 3]],
      [1, 2 | :tail],
      [:a | "b"],
      ~c"charlist",
      [1.0, "bin", :atom, {1, [2]}, %{k: [3]}]
    ]

    for t <- terms, do: Runtime.state_change(nil, t)
    id = Runtime.function_entry(M, :f, [edge, -edge - 1, [1 | 2]])
    flush!()

    stored = Causeway.events(pid: self(), type: :state_change) |> Enum.map(& &1.data.new)
    assert stored == terms
    assert Causeway.event(id).data == [edge, -edge - 1, [1 | 2]]
  end

  test "binaries of every kind are stored exactly, or truncated past the budget" do
    start_causeway!(max_term_bytes: 1_000)
    # on this VM heap binaries (up to 64 bytes) are read straight from the heap
    assert %{direct_boxed_terms: true} = Causeway.metrics().capture_path

    heap = for n <- [0, 1, 3, 63, 64], do: :binary.copy(<<n>>, n)
    refc = for n <- [65, 200, 600], do: :binary.copy(<<n>>, n)
    big = :binary.copy("x", 200)
    sub = [binary_part(big, 3, 5), binary_part(big, 0, 100)]
    <<_::3, odd::bitstring>> = <<1, 2, 3>>

    terms = [
      heap,
      refc,
      sub,
      ["literal", "", {"in a tuple"}, %{"key" => "value"}],
      [odd, <<1::1>>]
    ]

    for t <- terms, do: Runtime.state_change(nil, t)
    Runtime.state_change(nil, :binary.copy("y", 5_000))
    id = Runtime.function_entry(M, :f, [1, "b", :binary.copy("z", 64)])
    flush!()

    stored = Causeway.events(pid: self(), type: :state_change) |> Enum.map(& &1.data.new)
    assert stored == terms ++ [{:truncated, 5_000}]
    assert Causeway.event(id).data == [1, "b", :binary.copy("z", 64)]
  end

  test "arguments and results are stored exactly, on the flat path or off it" do
    start_causeway!()
    fresh = :"first_seen_#{System.unique_integer([:positive])}"
    heap_bin = :binary.copy("h", 43)

    # [args, result]: flat scalars that fit inline, and everything around
    # the flat path's edges (sizes, integer ranges, uncached atoms, nesting)
    cases = [
      [[], :ok],
      [[0, 255, 256, -1], 2 ** 31 - 1],
      [[-(2 ** 31), 2 ** 31, 2 ** 59, -(2 ** 60)], -(2 ** 31) - 1],
      [[:a, :ok, fresh], fresh],
      [[fresh, fresh], []],
      [["", "b", heap_bin], heap_bin],
      # 48 inline bytes, then one more
      [[:binary.copy("x", 35)], :binary.copy("y", 42)],
      [[:binary.copy("x", 36)], :binary.copy("y", 43)],
      [Enum.to_list(1..20), 1],
      [Enum.to_list(1..21), :binary.copy("z", 65)],
      [[[1], {2}, %{3 => 4}, 1.5, self()], {:ok, [1]}],
      [[1 | 2], [1 | 2]],
      # floats, tuples and lists two levels deep stay on the flat path
      [[1.5, -0.0, 1.0e300], 2.5],
      [[{:ok, 1}, {}, ~c"ab"], {:ok, [1, {:b, 2.0}]}],
      [[[1, [2, [3]]]], {:a, {:b, {:c}}}],
      [[{:ok, "b", 1.5, [], [:x]}], {:error, {:bad, ""}}]
    ]

    ids =
      for [args, result] <- cases do
        id = Runtime.function_entry(M, :f, args)
        Runtime.function_exit(id, result)
        id
      end

    flush!()

    for {id, [args, result]} <- Enum.zip(ids, cases) do
      assert Causeway.event(id).data == args
      [exit] = Causeway.events(type: :function_exit, call_id: id)
      assert exit.data == result
    end
  end

  test "atoms are stored exactly, first seen or cached, colliding or not" do
    start_causeway!()
    # more atoms than the encoder's cache has entries, short and long, Latin-1
    # too; each captured twice (the second time from the cache)
    atoms =
      for i <- 1..1500 do
        case rem(i, 3) do
          0 -> :"a#{i}"
          1 -> :"a_name_longer_than_twenty_two_bytes_#{i}"
          2 -> :"ünï#{i}"
        end
      end

    for _ <- 1..2, chunk <- Enum.chunk_every(atoms, 100), do: Runtime.state_change(nil, chunk)
    flush!()

    stored = Causeway.events(pid: self(), type: :state_change) |> Enum.map(& &1.data.new)
    expected = Enum.chunk_every(atoms, 100)
    assert stored == expected ++ expected
  end

  test "deep nesting and odd terms never crash" do
    start_causeway!()
    deep = Enum.reduce(1..100_000, :bottom, fn _, acc -> [acc] end)
    Runtime.state_change(nil, deep)

    Runtime.state_change(
      nil,
      {self(), make_ref(), fn -> :ok end, <<1::3>>, 1.5, -(2 ** 100), :ünïcode}
    )

    flush!()
    [d, odd] = Causeway.events(pid: self(), type: :state_change) |> Enum.map(& &1.data.new)
    assert inspect(d) =~ "truncated"
    {pid, ref, fun, bits, f, big, atom} = odd
    assert pid == self() and is_reference(ref) and match?({:fun, "#Fun<" <> _}, fun)
    assert bits == <<1::3>> and f == 1.5 and big == -(2 ** 100) and atom == :ünïcode
  end

  test "redacted keys never reach the disk" do
    {_, dir} = start_causeway!(redact: [:password, :token])
    secret = "hunter2-#{System.unique_integer([:positive])}"
    visible = "visible-#{System.unique_integer([:positive])}"
    Runtime.function_entry(Auth, :login, [%{user: "ada", password: secret, note: visible}])
    Runtime.message_send(self(), user: "ada", token: secret, note: visible)
    Runtime.state_change(nil, %{creds: {:password, secret}, note: visible})
    flush!()

    [entry] = Causeway.events(type: :function_entry)
    assert entry.data == [%{user: "ada", password: :redacted, note: visible}]
    [send] = Causeway.events(type: :message_send)
    assert send.data.message == [user: "ada", token: :redacted, note: visible]
    stop_causeway!()

    raw =
      dir
      |> Path.join("**")
      |> Path.wildcard()
      |> Enum.filter(&File.regular?/1)
      |> Enum.map(&File.read!/1)

    assert Enum.any?(raw, &String.contains?(&1, visible)), "the control value is in the raw bytes"
    refute Enum.any?(raw, &String.contains?(&1, secret)), "the secret is not"
  end

  test "capture can be switched off globally, per module and per process" do
    start_causeway!()
    :ok = Causeway.capture(:global, false)
    assert Runtime.function_entry(M, :f, []) == nil
    Runtime.state_change(1, 2)
    :ok = Causeway.capture(:global, true)

    :ok = Causeway.capture({:module, Quiet}, false)
    assert Runtime.function_entry(Quiet, :f, []) == nil
    loud = Runtime.function_entry(Loud, :f, [])
    assert is_integer(loud)

    other = spawn(fn -> receive do: (:go -> Runtime.state_change(:other, 1)) end)
    :ok = Causeway.capture({:pid, other}, false)
    send(other, :go)
    Process.sleep(20)
    :ok = Causeway.capture({:module, Quiet}, true)
    assert is_integer(Runtime.function_entry(Quiet, :g, []))
    flush!()

    assert Causeway.events() |> Enum.map(&{&1.module, &1.function}) == [{Loud, :f}, {Quiet, :g}]
    assert_raise ArgumentError, ~r/scope/, fn -> Causeway.capture(:everything, false) end
  end
end
