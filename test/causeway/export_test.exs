defmodule Causeway.ExportTest do
  use Causeway.Case, async: false

  alias Causeway.Runtime
  alias Causeway.Test.JSONParser

  setup do
    start_causeway!()
    :ok
  end

  # a → b → c, each inside an instrumented call; one message never received
  defp three_processes do
    parent = self()

    c =
      spawn(fn ->
        receive do
          msg ->
            Runtime.message_receive(msg)
            id = Runtime.function_entry(C, :handle, [msg])
            Runtime.state_change(:idle, :done)
            Runtime.function_exit(id, :ok)
            send(parent, :done)
        end
      end)

    b =
      spawn(fn ->
        receive do
          msg ->
            Runtime.message_receive(msg)
            id = Runtime.function_entry(B, :relay, [msg])
            Runtime.message_send(c, {:relayed, msg})
            send(c, {:relayed, msg})
            Runtime.function_exit(id, :relayed)
        end
      end)

    id = Runtime.function_entry(A, :start, [])
    Runtime.message_send(b, "hello \"world\"\n")
    send(b, "hello \"world\"\n")
    Runtime.message_send(c, :lost_in_transit)
    Runtime.function_exit(id, :ok)
    assert_receive :done, 5_000
    flush!()
    {self(), b, c}
  end

  test "the JSON encoder writes what a strict parser reads back" do
    term = %{
      "s" => "quote \" backslash \\ newline \n tab \t nul \u0000 é",
      :n => [1, -2, 3.5, 1.0e-9, 2.0e20],
      :b => [true, false, nil]
    }

    parsed = term |> Causeway.JSON.encode!() |> JSONParser.parse!()
    assert parsed["s"] == term["s"]
    assert parsed["n"] == [1, -2, 3.5, 1.0e-9, 2.0e20]
    assert parsed["b"] == [true, false, nil]
    assert Causeway.JSON.encode!(%{a: self()}) =~ "#PID<"
  end

  test "a Chrome trace has one track per process, calls as slices and messages as flows" do
    {a, b, c} = three_processes()
    path = Path.join(tmp_dir!("trace"), "trace.json")
    File.mkdir_p!(Path.dirname(path))

    assert {:ok, %{events: n, trace_events: t}} =
             Causeway.Export.chrome_trace(path, limit: :infinity)

    assert n > 0 and t > n

    %{"traceEvents" => evs, "displayTimeUnit" => "ns"} =
      path |> File.read!() |> JSONParser.parse!()

    tracks =
      for %{"ph" => "M", "name" => "thread_name", "tid" => tid, "args" => %{"name" => name}} <-
            evs,
          into: %{},
          do: {name, tid}

    assert Map.keys(tracks) |> Enum.sort() == Enum.sort(Enum.map([a, b, c], &inspect/1))

    # every call is a begin/end pair on its process's track, named by its MFA
    slices =
      for %{"ph" => ph, "name" => name, "tid" => tid} <- evs,
          ph in ["B", "E"],
          do: {ph, name, tid}

    assert {"B", "A.start/0", tracks[inspect(a)]} in slices
    assert {"E", "A.start/0", tracks[inspect(a)]} in slices
    assert {"B", "B.relay/1", tracks[inspect(b)]} in slices
    assert {"E", "C.handle/1", tracks[inspect(c)]} in slices

    # two messages were received: two flows, each starting on the sender's
    # track and finishing on the receiver's; the lost one has no flow
    starts = for %{"ph" => "s", "id" => id, "tid" => tid} <- evs, into: %{}, do: {id, tid}

    finishes =
      for %{"ph" => "f", "id" => id, "tid" => tid, "bp" => "e"} <- evs, into: %{}, do: {id, tid}

    assert map_size(starts) == 2
    assert Map.keys(starts) |> Enum.sort() == Map.keys(finishes) |> Enum.sort()

    assert Enum.sort(Enum.map(starts, fn {id, from} -> {from, finishes[id]} end)) ==
             Enum.sort([
               {tracks[inspect(a)], tracks[inspect(b)]},
               {tracks[inspect(b)], tracks[inspect(c)]}
             ])

    # the state change is an instant; timestamps are µs from the first event
    assert Enum.any?(evs, &match?(%{"ph" => "i", "name" => "state_change"}, &1))
    assert Enum.all?(evs, fn e -> e["ph"] == "M" or (is_number(e["ts"]) and e["ts"] >= 0) end)
  end

  test "a Mermaid sequence diagram of the messages between processes" do
    {a, b, c} = three_processes()
    path = Path.join(tmp_dir!("mmd"), "flow.mmd")
    File.mkdir_p!(Path.dirname(path))
    assert {:ok, _} = Causeway.Export.mermaid(path, pids: [a, b, c])
    text = File.read!(path)

    assert [
             "sequenceDiagram",
             "    participant P1 as " <> pa,
             "    participant P2 as " <> pb,
             "    participant P3 as " <> pc,
             "    P1->>P2: " <> first,
             "    P1-)P3: :lost_in_transit (not received)",
             "    P2->>P3: {:relayed, " <> _
           ] = String.split(text, "\n", trim: true)

    assert {pa, pb, pc} == {inspect(a), inspect(b), inspect(c)}
    refute first =~ "\n"
    assert_raise ArgumentError, ~r/:pids/, fn -> Causeway.Export.mermaid_text(pids: [:x]) end

    # :limit keeps the oldest messages; :infinity keeps them all
    assert Causeway.Export.mermaid_text(pids: [a, b, c], limit: :infinity) == text
    one = Causeway.Export.mermaid_text(pids: [a, b, c], limit: 1)
    assert String.split(one, "\n", trim: true) |> Enum.take(-1) == ["    P1->>P2: " <> first]
  end
end
