defmodule Causeway.ForeignTest do
  # Issue 12 item 11 (printing part): structs from another VM print as the
  # struct they were, and printing never crashes.
  use ExUnit.Case, async: true

  alias Causeway.{Event, Foreign}

  test "structs of unknown modules or with unknown field names print as themselves" do
    # as the store reader gives them: names it does not have as strings
    unknown = %{:__struct__ => "Elixir.Decimal", "coef" => 75, "exp" => -2, "sign" => 1}
    assert Event.short(unknown) == "%Decimal{coef: 75, exp: -2, sign: 1}"

    # a known module with an Inspect of its own, but fields read as
    # strings: its Inspect would fail on them
    partial = %{:__struct__ => Causeway.Store, "dir" => "x", "handle" => nil}
    assert inspect(partial) =~ "Inspect.Error"
    assert Event.short(partial) == "%Causeway.Store{dir: \"x\", handle: nil}"

    # nested, in lists, tuples and improper lists
    nested = {:ok, [unknown, %{inner: unknown} | :tail]}
    out = Event.short(nested)
    assert out =~ "%Decimal{" and not (out =~ "Inspect.Error")

    # real structs are left alone
    assert Event.short(%Causeway.Store{dir: "d"}) == "#Causeway.Store<d read-only>"
    assert Event.short(URI.parse("http://x")) =~ "%URI{"
  end

  test "an event whose data holds such terms inspects without error" do
    e = %Event{
      id: 1,
      type: :state_change,
      wall_time: DateTime.utc_now(),
      pid: "<0.1.0>",
      data: %{old: nil, new: %{:__struct__ => "Elixir.Cart", "items" => [1]}}
    }

    text = inspect(e)
    assert text =~ "%Cart{items: [1]}"
    refute text =~ "Inspect.Error"
    assert %Foreign{module: "Cart"} = Foreign.sanitize(e.data.new)
  end
end
