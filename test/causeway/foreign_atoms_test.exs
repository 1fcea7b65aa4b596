defmodule Causeway.ForeignAtomsTest do
  # Issue 12 item 11: Causeway.open(dir, atoms: :create) reads a store
  # another VM wrote with real atoms, within a budget; the default creates none.
  use Causeway.Case, async: false

  # A store written by another VM: a struct of a module and keys, a tag and
  # a function name this VM never had.
  defp foreign_store(u, tags) do
    dir = tmp_dir!("atoms")
    ebin = Path.dirname(:code.which(Causeway))

    script = """
    defmodule Elixir.Ledger#{u}.Money do
      defstruct [:amount_#{u}, :currency_#{u}]
    end
    {:ok, _} = Causeway.start_link(dir: #{inspect(dir)})
    m = struct(Ledger#{u}.Money, [{:amount_#{u}, 75}, {:currency_#{u}, :eur}])
    Causeway.Runtime.state_change(nil, m)
    for i <- 1..#{tags}, do: Causeway.Runtime.state_change(i, String.to_atom("tag_#{u}_\#{i}"))
    :ok = Causeway.flush()
    IO.puts("FLUSHED")
    """

    {out, 0} =
      System.cmd(System.find_executable("elixir"), ["-pa", ebin, "-e", script],
        env: [{"LANG", "C.UTF-8"}, {"LC_ALL", "C.UTF-8"}],
        stderr_to_stdout: true
      )

    assert out =~ "FLUSHED"
    dir
  end

  defp exists?(name) do
    String.to_existing_atom(name)
    true
  rescue
    ArgumentError -> false
  end

  test "the default creates no atom; atoms: :create gives the struct back as a struct" do
    u = System.unique_integer([:positive])
    dir = foreign_store(u, 3)
    mod = "Elixir.Ledger#{u}.Money"

    {:ok, safe} = Causeway.open(dir)
    [first | _] = Causeway.events(store: safe, type: :state_change)
    assert %{:__struct__ => ^mod} = first.data.new
    assert inspect(first) =~ "%Ledger#{u}.Money{amount_#{u}: 75"
    Causeway.close(safe)
    refute exists?(mod) or exists?("amount_#{u}") or exists?("tag_#{u}_1")

    {:ok, s} = Causeway.open(dir, atoms: :create)
    [first | rest] = Causeway.events(store: s, type: :state_change)
    assert exists?(mod)
    amount = String.to_existing_atom("amount_#{u}")
    assert first.data.new.__struct__ == String.to_existing_atom(mod)
    refute inspect(first) =~ "Inspect.Error"
    assert Map.fetch!(first.data.new, amount) == 75

    assert Enum.map(rest, & &1.data.new) ==
             Enum.map(1..3, &String.to_existing_atom("tag_#{u}_#{&1}"))

    Causeway.close(s)
  end

  test "past :atom_limit names stay binaries and the next query says why" do
    u = System.unique_integer([:positive])
    dir = foreign_store(u, 50)
    before = :erlang.system_info(:atom_count)
    {:ok, s} = Causeway.open(dir, atoms: :create, atom_limit: 10)
    evs = Causeway.events(store: s, type: :state_change, limit: :infinity)
    assert length(evs) == 51
    # the module, its two keys, :eur and 6 tags; the rest as binaries
    assert :erlang.system_info(:atom_count) - before <= 10
    assert Enum.any?(evs, &is_binary(&1.data.new))

    assert_raise Causeway.Error, ~r/created the 10 atoms allowed by atoms: :create/, fn ->
      Causeway.events(store: s, limit: 1)
    end

    Causeway.close(s)
  end

  test "bad atoms options are ArgumentErrors" do
    assert_raise ArgumentError, ~r/:atoms must be :safe or :create/, fn ->
      Causeway.open("/tmp/x", atoms: :yes)
    end

    assert_raise ArgumentError, ~r/:atom_limit must be an integer in 1..1000000/, fn ->
      Causeway.open("/tmp/x", atoms: :create, atom_limit: 0)
    end
  end
end
