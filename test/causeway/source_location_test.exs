defmodule Causeway.SourceLocationTest do
  # Issue 12 item 8: function entries of instrumented code carry the file
  # and line of the function's first clause, shown by the printers and the
  # Chrome trace.
  use Causeway.Case, async: false

  import ExUnit.CaptureIO

  @source """
  defmodule CausewayLocFixture.Cart do
    use Causeway.Instrument

    def add(cart, item) when is_list(cart), do: [item | cart]
    def add(nil, item), do: add([], item)

    def total(cart), do: length(cart)
  end
  """

  setup_all do
    Code.compile_string(@source, "lib/cart_fixture.ex")
    :ok
  end

  test "entries carry file and line of the first clause; exits and other events none" do
    start_causeway!()
    mod = CausewayLocFixture.Cart
    assert mod.add(nil, :apple) == [:apple]
    assert mod.total([:a, :b]) == 2
    flush!()

    entries = Causeway.events(type: :function_entry)

    assert Enum.map(entries, &{&1.function, &1.file, &1.line}) == [
             {:add, "lib/cart_fixture.ex", 4},
             {:add, "lib/cart_fixture.ex", 4},
             {:total, "lib/cart_fixture.ex", 7}
           ]

    assert Enum.all?(Causeway.events(type: :function_exit), &(&1.file == nil))
    assert Causeway.Event.location(hd(entries)) == "lib/cart_fixture.ex:4"

    tree = capture_io(fn -> Causeway.print_call_tree(hd(entries).id) end)
    assert tree =~ "lib/cart_fixture.ex:4"
    assert capture_io(fn -> Causeway.print_timeline(self()) end) =~ "lib/cart_fixture.ex:7"

    [slice | _] =
      Causeway.Export.chrome_events(entries)
      |> Enum.filter(&(&1["ph"] == "B"))

    assert slice["args"]["file"] == "lib/cart_fixture.ex" and slice["args"]["line"] == 4
  end

  test "entries of plain Runtime calls have no location" do
    start_causeway!()
    id = Causeway.Runtime.function_entry(NotInstrumented, :f, [])
    Causeway.Runtime.function_exit(id, :ok)
    flush!()
    assert [%{file: nil, line: nil}] = Causeway.events(type: :function_entry)
  end
end
