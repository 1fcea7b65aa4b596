defmodule Causeway.StateDiffTest do
  # state_diff/1 and changes/3 (issue 14 item 2), against brute force.
  use Causeway.Case, async: false
  doctest Causeway.StateDiff

  alias Causeway.StateDiff

  defmodule Item do
    defstruct [:sku, qty: 1]
  end

  test "maps, structs, lists and tuples, recursively" do
    old = %{cart: %{items: [%Item{sku: "a"}], owner: "ada"}, pos: {1, 2}, tags: [:x], gone: 1}

    new = %{
      cart: %{items: [%Item{sku: "a", qty: 2}, %Item{sku: "b"}], owner: "ada"},
      pos: {1, 3},
      tags: [:x],
      new: true
    }

    assert StateDiff.diff(old, new).changes == [
             {[:cart, :items, 0, :qty], :changed, 1, 2},
             {[:cart, :items, 1], :added, nil, %Item{sku: "b"}},
             {[:gone], :removed, 1, nil},
             {[:new], :added, nil, true},
             {[:pos, 1], :changed, 2, 3}
           ]

    assert StateDiff.diff(old, old).changes == []
    assert StateDiff.diff(1, 1.0).changes == [{[], :changed, 1, 1.0}]
    assert StateDiff.diff(%Item{}, %{sku: nil, qty: 1}).changes |> length() == 1
    assert StateDiff.diff([1 | 2], [1 | 3]).changes == [{[], :changed, [1 | 2], [1 | 3]}]
    text = to_string(StateDiff.diff(old, new))
    assert text =~ "~ cart.items[0].qty: 1 → 2"
    assert text =~ "- gone: 1"
    assert inspect(StateDiff.diff(old, new)) =~ "#Causeway.StateDiff<"
  end

  test "paths through maps, structs, keyword lists and tuples" do
    s = %{cart: %Item{sku: "a"}, opts: [mode: :fast], pair: {:l, [10, 20]}}
    assert StateDiff.at(s, [:cart, :sku]) == {:ok, "a"}
    assert StateDiff.at(s, [:opts, :mode]) == {:ok, :fast}
    assert StateDiff.at(s, [:pair, 1, 1]) == {:ok, 20}
    assert StateDiff.at(s, [:pair, 5]) == :error
    assert StateDiff.at(s, [:nope]) == :error
  end

  defmodule Shop do
    use GenServer
    def init(s), do: {:ok, s}
    def handle_call({:put, k, v}, _, s), do: {:reply, :ok, put_in(s, [:cart, k], v)}
    def handle_call({:owner, o}, _, s), do: {:reply, :ok, %{s | owner: o}}
  end

  test "changes/3: every change of one path, with old, new and the message that caused it" do
    start_causeway!()
    {:ok, shop} = GenServer.start_link(Shop, %{cart: %{}, owner: nil})
    {:ok, w} = Causeway.watch(shop)

    ops = [
      {:put, :items, [:a]},
      {:owner, "ada"},
      {:put, :items, [:a, :b]},
      {:put, :coupon, 5},
      {:put, :items, [:a, :b]}
    ]

    for op <- ops, do: GenServer.call(shop, op)
    flush!()
    Causeway.unwatch(w)

    found = Causeway.changes(shop, [:cart, :items])

    # brute force: replay the states and keep each step where the path changed
    states =
      Enum.scan(ops, %{cart: %{}, owner: nil}, fn
        {:put, k, v}, s -> put_in(s, [:cart, k], v)
        {:owner, o}, s -> %{s | owner: o}
      end)

    expected =
      [%{cart: %{}, owner: nil} | states]
      |> Enum.chunk_every(2, 1, :discard)
      |> Enum.zip(ops)
      |> Enum.flat_map(fn {[a, b], op} ->
        va = get_in(a, [:cart, :items]) || :none
        vb = get_in(b, [:cart, :items]) || :none
        if va == vb, do: [], else: [{va, vb, op}]
      end)

    assert Enum.map(found, &{&1.old, &1.new, &1.cause.data.message}) == expected
    assert length(found) == 2
    assert Enum.all?(found, &(&1.cause.type == :message_receive))

    # the timeline shows state changes as diffs
    out = ExUnit.CaptureIO.capture_io(fn -> Causeway.print_timeline(shop) end)
    assert out =~ "+ cart.items: [:a]"
    assert out =~ "~ owner: nil → \"ada\""
    assert_raise ArgumentError, fn -> Causeway.state_diff(:nope) end
    assert_raise ArgumentError, fn -> Causeway.changes(shop, :cart) end
  end
end
