defmodule Causeway.SecurityTest do
  # Issue 16 item 7: private stores, redaction down to the raw bytes,
  # another user's directory refused, no atoms from stored data.
  use Causeway.Case, async: false

  import Bitwise
  alias Causeway.Runtime

  defp mode(path), do: File.stat!(path).mode &&& 0o777

  test "a store is created 0700 and its files are 0600 once it closes" do
    {_, dir} = start_causeway!()
    for i <- 1..2_000, do: Runtime.state_change(i, i + 1)
    flush!()
    assert mode(dir) == 0o700
    stop_causeway!()
    files = dir |> Path.join("*") |> Path.wildcard() |> Enum.filter(&File.regular?/1)
    assert files != []
    for f <- files, do: assert(mode(f) == 0o600, "#{f}: #{Integer.to_string(mode(f), 8)}")
  end

  test "redacted values never reach any file of the store, WAL and SSTs included" do
    secret = "s3cret-#{System.unique_integer([:positive])}"
    {_, dir} = start_causeway!(redact: [:password])

    for i <- 1..3_000,
        do: Runtime.function_entry(Auth, :login, [%{user: "u#{i}", password: secret}])

    flush!()
    # bytes while running (the WAL), then after close (SSTs)
    grep = fn ->
      dir
      |> Path.join("**")
      |> Path.wildcard()
      |> Enum.filter(&File.regular?/1)
      |> Enum.any?(&(File.read!(&1) =~ secret))
    end

    refute grep.()
    stop_causeway!()
    refute grep.()
    start_causeway!(dir: dir)

    assert [%{data: [%{password: :redacted}]} | _] =
             Causeway.events(type: :function_entry, limit: 1)
  end

  @tag :root
  test "a writable open of another user's directory is refused with a clear error" do
    if System.cmd("id", ["-u"]) |> elem(0) |> String.trim() != "0" do
      IO.puts("  skipped: needs root to chown a directory to another user")
    else
      dir = tmp_dir!("theirs")
      File.mkdir_p!(dir)
      {_, 0} = System.cmd("chown", ["65534:65534", dir])

      assert {:error, %Causeway.Error{kind: :path, message: msg}} = Causeway.start_link(dir: dir)
      assert msg =~ "owned by uid 65534"
    end
  end

  test "reading events back creates no atoms" do
    {_, dir} = start_causeway!()
    for i <- 1..100, do: Runtime.state_change(nil, {:"causeway_sec_atom_#{i}", i})
    flush!()
    stop_causeway!()
    {:ok, s} = Causeway.open(dir)
    before = :erlang.system_info(:atom_count)
    _ = Causeway.events(store: s, limit: :infinity)
    assert :erlang.system_info(:atom_count) == before
    Causeway.close(s)
  end
end
