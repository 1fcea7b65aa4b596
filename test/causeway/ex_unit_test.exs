defmodule Causeway.ExUnitTest do
  # Causeway.ExUnit on a real test run: a suite with a failing and a passing
  # test, run by ExUnit in a separate VM with the one line of set-up.
  use ExUnit.Case, async: false

  @script """
  Causeway.ExUnit.start(dir: System.fetch_env!("CAUSEWAY_TEST_DIR"))
  ExUnit.start(autorun: false, colors: [enabled: false])

  defmodule Shop do
    use Causeway.Instrument
    def total(items), do: sum(items) * 2
    def sum(items), do: Enum.reduce(items, 0, &(&1 + &2))
  end

  defmodule Counter do
    use GenServer
    use Causeway.Instrument
    def init(n), do: {:ok, n}
    def handle_call({:add, k}, _from, n), do: {:reply, n + k, n + k}
  end

  defmodule ShopTest do
    use ExUnit.Case

    test "a failing total" do
      # apart from the other test's events
      Process.sleep(50)
      {:ok, pid} = GenServer.start_link(Counter, 1)
      assert GenServer.call(pid, {:add, 2}) == 3
      assert Shop.total([1, 2]) == 7
    end

    test "a passing total" do
      Process.sleep(50)
      total = Shop.total([5])
      Process.sleep(50)
      assert total == 10
    end
  end

  %{failures: 1} = ExUnit.run()
  """

  @tag timeout: 120_000
  test "a failing test gets a summary of what it did; a passing one does not" do
    dir = Path.join(System.tmp_dir!(), "causeway-exunit-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    script = Path.join(dir, "suite.exs")
    File.write!(script, @script)
    ebin = Path.join(Mix.Project.build_path(), "lib/causeway/ebin")

    {out, status} =
      System.cmd(System.find_executable("elixir"), ["-pa", ebin, script],
        env: [{"CAUSEWAY_TEST_DIR", Path.join(dir, "store")}, {"MIX_ENV", "test"}],
        stderr_to_stdout: true
      )

    assert status == 0, out
    assert out =~ "1) test a failing total (ShopTest)"
    assert out =~ ~s(Causeway recorded)
    assert out =~ ~s("test a failing total" \(ShopTest\))
    # the call tree of the failing test, its messages and its state change
    assert out =~ "Shop.total([1, 2]) → 6"
    assert out =~ "Shop.sum([1, 2]) → {:tail_call, {Enum, :reduce, 3}}"
    assert out =~ "Counter.handle_call({:add, 2}"
    assert out =~ "{:add, 2}"
    assert out =~ "1 → 3"
    assert out =~ "explore: {:ok, s} = Causeway.open("
    # only the failing test gets one
    assert length(String.split(out, "Causeway recorded")) == 2
    refute out =~ "Shop.total([5])"

    # after the run, from the saved windows: each test's events
    {:ok, store} = Causeway.open(Path.join(dir, "store"), read_only: true)
    opts = [dir: Path.join(dir, "store"), store: store, type: :function_entry]
    assert {:ok, failing} = Causeway.ExUnit.events("a failing total", opts)
    assert {:total, [[1, 2]]} in Enum.map(failing, &{&1.function, &1.data})
    refute {:total, [[5]]} in Enum.map(failing, &{&1.function, &1.data})
    assert {:ok, passing} = Causeway.ExUnit.events({ShopTest, "test a passing total"}, opts)
    assert Enum.map(passing, &{&1.function, &1.data}) == [total: [[5]], sum: [[5]]]
    assert Causeway.ExUnit.events("no such test", opts) == {:error, :unknown_test}
    Causeway.close(store)
  end
end
