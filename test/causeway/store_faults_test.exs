defmodule Causeway.StoreFaultsTest do
  # Real faults on real stores: a full tmpfs, byte damage of copies of a
  # store this VM wrote, a second VM holding or rewriting the directory.
  use Causeway.Case, async: false

  alias Causeway.{Native, Runtime}

  @moduletag timeout: 180_000

  @root (case System.cmd("id", ["-u"]) do
           {"0\n", 0} -> true
           _ -> false
         end)

  defp wait_until(fun, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout

    Stream.repeatedly(fn ->
      r = fun.()
      unless r, do: Process.sleep(20)
      r
    end)
    |> Enum.find(fn r -> r || System.monotonic_time(:millisecond) > deadline end)
  end

  defp count(opts) do
    opts |> Keyword.merge(limit: :infinity, links: false) |> Causeway.events() |> length()
  end

  # ------------------------------------------------------------ a full disk

  @tag skip: unless(@root, do: "needs root to mount a tmpfs")
  test "a full disk: flush fails at once, and writing resumes by itself when space comes back" do
    base = tmp_dir!("full")
    File.mkdir_p!(base)

    case System.cmd("mount", ["-t", "tmpfs", "-o", "size=24m", "tmpfs", base],
           stderr_to_stdout: true
         ) do
      {_, 0} -> on_exit(fn -> System.cmd("umount", ["-l", base]) end)
      {out, _} -> flunk("cannot mount a tmpfs here: #{out}")
    end

    dir = Path.join(base, "store")
    filler = Path.join(base, "filler")
    File.write!(filler, :binary.copy(<<7>>, 10 * 1024 * 1024))
    # small rings: what is still buffered when space comes back fits in it
    start_causeway!(dir: dir, ring_size: 2048)
    :ok = Causeway.subscribe(:health)

    for i <- 1..1_000, do: Runtime.state_change({:kept, i}, i)
    flush!()

    # capture until the disk is full (a reopen that flushes the log into
    # compressed tables makes room at first, then there is none left)
    fill = fn round ->
      for i <- 1..2_000,
          do: Runtime.state_change({:fill, round, i}, "filling the disk #{round} #{i}")
    end

    failing? = fn -> match?({:error, _}, Causeway.flush(Causeway, 30_000)) end

    filled =
      Enum.find(1..5_000, fn round ->
        fill.(round)
        # still failing a second later: full for good
        failing?.() and Process.sleep(1_000) == :ok and failing?.()
      end)

    assert filled, "the disk never filled"
    # capture goes on meanwhile: every batch retried, then dropped and counted
    for round <- 1..10, do: fill.(100_000 + round)

    # flush says so at once instead of timing out
    {us, r} = :timer.tc(fn -> Causeway.flush(Causeway, 30_000) end)
    assert {:error, %Causeway.Error{kind: :storage, message: msg}} = r
    assert msg =~ "space", msg
    assert us < 2_000_000, "flush took #{div(us, 1000)} ms"
    assert Causeway.health().status == :failing
    # what was stored is still there to query
    assert length(Causeway.events(type: :state_change, limit: 10, links: false)) == 10

    # space comes back: the store is reopened and writing resumes
    File.rm!(filler)
    t0 = System.monotonic_time(:millisecond)
    assert wait_until(fn -> Causeway.flush(Causeway, 2_000) == :ok end, 60_000)
    back_ms = System.monotonic_time(:millisecond) - t0
    assert_receive {:causeway, :health, :storage_recovered, _}, 5_000

    for i <- 1..100, do: Runtime.state_change(:after, i)
    flush!()

    events = Causeway.events(type: :state_change, limit: :infinity, links: false)
    assert Enum.count(events, &match?(%{data: %{old: {:kept, _}}}, &1)) == 1_000
    assert Enum.count(events, &(&1.data.old == :after)) == 100

    m = Causeway.metrics()
    assert m.produced == m.persisted + m.dropped_total
    assert m.store_recoveries >= 1

    IO.puts(
      "full disk: flush answered in #{div(us, 1000)} ms; writing resumed #{back_ms} ms " <>
        "after space came back; dropped #{inspect(m.dropped)}, #{m.write_errors} write errors"
    )

    # RocksDB's info logs stay bounded through every reopen
    assert length(Path.wildcard(Path.join(dir, "LOG*"))) <= 3

    # and the directory opens again after a restart
    stop_causeway!()
    start_causeway!(dir: dir)
    flush!()
    assert count(type: :state_change) >= 1_100
  end

  # ------------------------------------------- a directory made unwritable

  @tag skip: unless(@root, do: "needs root for chattr")
  test "a store directory made immutable mid-run: flush says so, the VM stays up, writing resumes" do
    # chattr +i: no file in it may be created, appended or renamed, root
    # included (a read-only chmod does not stop root); what RocksDB has
    # open fails on its next write, as on a file system remounted read-only
    dir = tmp_dir!("immutable")
    chattr = fn flag -> System.cmd("chattr", ["-R", flag, dir], stderr_to_stdout: true) end
    on_exit(fn -> chattr.("-i") end)
    start_causeway!(dir: dir, ring_size: 2048)
    for i <- 1..1_000, do: Runtime.state_change(:kept, i)
    flush!()

    case chattr.("+i") do
      {_, 0} -> :ok
      {out, _} -> flunk("chattr +i does not work on #{dir}: #{out}")
    end

    for i <- 1..5_000, do: Runtime.state_change(:during, i)
    {us, r} = :timer.tc(fn -> Causeway.flush(Causeway, 30_000) end)
    assert {:error, %Causeway.Error{kind: :storage, message: msg}} = r
    assert msg =~ "not permitted", msg
    assert us < 10_000_000, "flush took #{div(us, 1000)} ms"
    assert Causeway.health().status == :failing
    # still answering queries from what it holds
    assert length(Causeway.events(type: :state_change, limit: 10, links: false)) == 10

    {_, 0} = chattr.("-i")
    assert wait_until(fn -> Causeway.flush(Causeway, 2_000) == :ok end, 60_000)
    for i <- 1..100, do: Runtime.state_change(:after, i)
    flush!()

    by = Causeway.events(type: :state_change, limit: :infinity, links: false)
    by = Enum.frequencies_by(by, & &1.data.old)
    assert by[:kept] == 1_000 and by[:after] == 100
    m = Causeway.metrics()
    # what could not wait in the rings was dropped, and counted
    assert m.produced == m.persisted + m.dropped_total
    assert by[:during] == 5_000 - m.dropped_total
    assert m.store_recoveries >= 1

    IO.puts(
      "immutable directory: flush answered in #{div(us, 1000)} ms; #{by[:during]} of 5000 " <>
        "kept while it lasted, dropped #{inspect(Map.reject(m.dropped, &(elem(&1, 1) == 0)))}"
    )
  end

  # ------------------------------------------------------------ damaged files

  # A real store written by this VM: 20 000 events flushed, all still in
  # the write-ahead log (closing does not flush memtables).
  defp flushed_store(tag) do
    dir = tmp_dir!(tag)
    start_causeway!(dir: dir)
    for i <- 1..20_000, do: Runtime.state_change(i, i + 1)
    flush!()
    stop_causeway!()
    dir
  end

  defp damaged_copy(dir, tag, damage) do
    copy = tmp_dir!(tag)
    File.cp_r!(dir, copy)
    damage.(copy)
    copy
  end

  defp biggest(dir, ext) do
    dir
    |> Path.join("*." <> ext)
    |> Path.wildcard()
    |> Enum.max_by(&File.stat!(&1).size)
  end

  defp truncate(file, size) do
    {:ok, f} = :file.open(file, [:read, :write, :binary])
    {:ok, _} = :file.position(f, size)
    :ok = :file.truncate(f)
    :ok = :file.close(f)
  end

  defp assert_corrupt(copy, names) do
    assert {:error, %Causeway.Error{kind: :corrupt, message: m1}} =
             Causeway.open(copy, read_only: true)

    assert {:error, %Causeway.Error{kind: :corrupt, message: m2}} =
             Causeway.start_link(dir: copy, name: :damaged)

    for m <- [m1, m2], do: assert(m =~ names, m)
  end

  test "a write-ahead log cut in half or overwritten in the middle is :corrupt, never silently short" do
    dir = flushed_store("wal")
    {:ok, s} = Causeway.open(dir)
    assert count(store: s) == 20_000
    Causeway.close(s)
    wal = biggest(dir, "log")
    name = Path.basename(wal)
    size = File.stat!(wal).size

    cut = damaged_copy(dir, "cut", fn c -> truncate(Path.join(c, name), div(size, 2)) end)
    assert_corrupt(cut, name)

    assert File.stat!(Path.join(cut, name)).size == div(size, 2),
           "the damaged file is left as it is"

    garbage =
      damaged_copy(dir, "garbage", fn c ->
        {:ok, f} = :file.open(Path.join(c, name), [:read, :write, :binary])
        :ok = :file.pwrite(f, div(size, 2), :crypto.strong_rand_bytes(4096))
        :ok = :file.close(f)
      end)

    assert_corrupt(garbage, name)

    # the undamaged original still opens whole
    {:ok, s} = Causeway.open(dir)
    assert count(store: s) == 20_000
    Causeway.close(s)
  end

  test "a torn log tail after the last flush opens, keeps every flushed event, and says so in health/0" do
    dir = tmp_dir!("torn")

    port =
      spawn_vm("""
      {:ok, _} = Causeway.start_link(dir: #{inspect(dir)})
      for i <- 1..5_000, do: Causeway.Runtime.state_change(:flushed, i)
      :ok = Causeway.flush()
      IO.puts("FLUSHED")
      Stream.iterate(0, &(&1 + 1)) |> Enum.each(fn i -> Causeway.Runtime.state_change(:later, i) end)
      """)

    wait_for(port, "FLUSHED")
    Process.sleep(300)
    {:os_pid, os_pid} = Port.info(port, :os_pid)
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])
    assert_receive {^port, {:exit_status, 137}}, 10_000

    # the tail of the log, written after the flush, torn mid-record
    wal = biggest(dir, "log")
    truncate(wal, File.stat!(wal).size - 37)

    start_causeway!(dir: dir)
    flushed = Causeway.events(type: :state_change, limit: :infinity, links: false)
    assert Enum.count(flushed, &(&1.data.old == :flushed)) == 5_000
    health = Causeway.health()
    assert {:wal_damage, note} = List.keyfind(health.alerts, :wal_damage, 0)
    assert note =~ "after the last flush"
    assert health.status == :degraded
  end

  test "a truncated SST, a deleted SST and a truncated MANIFEST are :corrupt, not :path" do
    dir = flushed_store("sst")
    {:ok, w} = Causeway.open(dir, read_only: false)
    :ok = Native.store_flush(w.handle)
    Causeway.close(w)
    sst = biggest(dir, "sst")
    name = Path.basename(sst)

    truncated =
      damaged_copy(dir, "sst-cut", fn c ->
        truncate(Path.join(c, name), div(File.stat!(sst).size, 2))
      end)

    assert_corrupt(truncated, name)

    deleted = damaged_copy(dir, "sst-gone", fn c -> File.rm!(Path.join(c, name)) end)
    assert_corrupt(deleted, name)

    [manifest] = Path.wildcard(Path.join(dir, "MANIFEST-*"))

    manifest_cut =
      damaged_copy(dir, "manifest", fn c ->
        truncate(Path.join(c, Path.basename(manifest)), div(File.stat!(manifest).size, 2))
      end)

    assert {:error, %Causeway.Error{kind: :corrupt}} = Causeway.open(manifest_cut)

    assert {:error, %Causeway.Error{kind: :corrupt}} =
             Causeway.start_link(dir: manifest_cut, name: :damaged)
  end

  test "a second writer on a directory under another name (a symlink) is :busy, and the store reopens with every flushed event" do
    # RocksDB's in-process lock compares LOCK file names: before writers
    # claimed directories by inode, this second instance started, the two
    # deleted each other's table files, and the store no longer opened
    dir = tmp_dir!("alias")
    File.mkdir_p!(dir)
    link = dir <> "-link"
    File.ln_s!(dir, link)
    on_exit(fn -> File.rm(link) end)

    {:ok, _} = Causeway.start_link(dir: dir)
    for i <- 1..1_000, do: Causeway.Runtime.state_change(:alias, i)
    :ok = Causeway.flush()

    assert {:error, %Causeway.Error{kind: :busy, message: m}} =
             Causeway.start_link(dir: link, name: :causeway_alias)

    assert m =~ "the same directory"
    refute Process.whereis(:causeway_alias)
    assert {:error, %Causeway.Error{kind: :busy}} = Causeway.open(link, read_only: false)
    # a reader under any name is welcome
    assert {:ok, r} = Causeway.open(link, read_only: true)
    Causeway.close(r)

    for i <- 1_001..2_000, do: Causeway.Runtime.state_change(:alias, i)
    :ok = Causeway.flush()
    :ok = Causeway.stop()

    assert {:ok, _} = Causeway.start_link(dir: link)
    assert length(Causeway.events(type: :state_change, limit: :infinity)) == 2_000
    :ok = Causeway.stop()
  end

  # ------------------------------------------------------------ a second VM

  defp spawn_vm(script) do
    ebin = Path.dirname(:code.which(Causeway))

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 4096},
        args: ["-pa", ebin, "-e", script],
        env: [{~c"LANG", ~c"C.UTF-8"}, {~c"LC_ALL", ~c"C.UTF-8"}]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    on_exit(fn -> System.cmd("kill", ["-9", Integer.to_string(os_pid)]) end)
    port
  end

  defp wait_for(port, prefix, timeout \\ 60_000) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        if String.starts_with?(line, prefix), do: line, else: wait_for(port, prefix, timeout)

      {^port, {:exit_status, s}} ->
        flunk("the other VM exited with #{s}")
    after
      timeout -> flunk("no #{prefix} from the other VM")
    end
  end

  test "a VM that halts while retention and writers work on its store exits with its own status" do
    # halt calls exit(), which ran RocksDB's static destructors under the
    # threads still inside it: about one halt in fifteen of this VM ended in
    # SIGSEGV (status 139) or SIGABRT (134) instead of 0
    dir = tmp_dir!("halt")

    statuses =
      for n <- 1..10 do
        port =
          spawn_vm("""
          {:ok, _} = Causeway.start_link(dir: #{inspect(dir)}, retention: [max_bytes: 1], flush_interval_ms: 1)
          for _ <- 1..2, do: spawn(fn -> Stream.repeatedly(&Causeway.enforce_retention/0) |> Stream.run() end)
          for p <- 1..2 do
            spawn(fn ->
              Enum.each(Stream.iterate(1, &(&1 + 1)), fn i ->
                id = Causeway.Runtime.function_entry(Halt.M, :f, [i, :binary.copy("x", rem(i, 300))])
                Causeway.Runtime.state_change(%{i: i - 1}, %{i: i, p: p})
                Causeway.Runtime.function_exit(id, {:ok, i})
                if rem(i, 5000) == 0, do: Causeway.flush()
              end)
            end)
          end
          Process.sleep(#{300 + n * 113})
          System.halt(0)
          """)

        receive do
          {^port, {:exit_status, s}} -> s
        after
          60_000 -> flunk("VM #{n} did not halt")
        end
      end

    assert statuses == List.duplicate(0, 10)
    assert {:ok, s} = Causeway.open(dir)
    Causeway.close(s)
  end

  test "a directory another VM writes is :busy for a writer and open to readers" do
    dir = tmp_dir!("busy")

    port =
      spawn_vm("""
      {:ok, _} = Causeway.start_link(dir: #{inspect(dir)})
      IO.puts("READY")
      Process.sleep(:infinity)
      """)

    wait_for(port, "READY")

    assert {:error, %Causeway.Error{kind: :busy, message: m}} = Causeway.start_link(dir: dir)
    assert m =~ "OS process"
    assert {:error, %Causeway.Error{kind: :busy}} = Causeway.open(dir, read_only: false)
    assert {:ok, s} = Causeway.open(dir, read_only: true)
    Causeway.close(s)
  end

  # A VM that starts an instance on the directory, writes and flushes, and
  # stops it, over and over: every start replays the log, flushes it into new
  # files, deletes the old ones and writes a new MANIFEST.
  defp restarting_writer(dir) do
    port =
      spawn_vm("""
      Enum.each(Stream.iterate(1, &(&1 + 1)), fn n ->
        {:ok, _} = Causeway.start_link(dir: #{inspect(dir)})
        for i <- 1..2_000, do: Causeway.Runtime.state_change(n, i)
        :ok = Causeway.flush()
        IO.puts("UP \#{n}")
        Causeway.stop()
      end)
      """)

    wait_for(port, "UP 2")
    port
  end

  defp open_repeatedly(dir, n) do
    for _ <- 1..n do
      case Causeway.open(dir, read_only: true) do
        {:ok, s} ->
          Causeway.close(s)
          :ok

        {:error, e} ->
          {:error, e}
      end
    end
  end

  test "read-only opens racing another VM's restarts never report corruption" do
    dir = tmp_dir!("race")
    restarting_writer(dir)
    {us, results} = :timer.tc(fn -> open_repeatedly(dir, 200) end)
    assert Enum.reject(results, &(&1 == :ok)) == []
    IO.puts("200 read-only opens next to a restarting writer: #{div(us, 1000)} ms")
  end

  @tag :long
  @tag skip: unless(System.get_env("CAUSEWAY_LONG"), do: "set CAUSEWAY_LONG=1 to run")
  test "long: 2 000 read-only opens racing another VM's restarts" do
    dir = tmp_dir!("race-long")
    restarting_writer(dir)
    assert Enum.reject(open_repeatedly(dir, 2_000), &(&1 == :ok)) == []
  end

  test "a long-lived read-only store sees new events after refresh/1" do
    dir = tmp_dir!("refresh")

    port =
      spawn_vm("""
      {:ok, _} = Causeway.start_link(dir: #{inspect(dir)})
      for i <- 1..1_000, do: Causeway.Runtime.state_change(:a, i)
      :ok = Causeway.flush()
      IO.puts("A")
      IO.gets("")
      for i <- 1..1_000, do: Causeway.Runtime.state_change(:b, i)
      :ok = Causeway.flush()
      IO.puts("B")
      Process.sleep(:infinity)
      """)

    wait_for(port, "A")
    {:ok, s} = Causeway.open(dir)
    assert count(store: s, type: :state_change) == 1_000
    Port.command(port, "go\n")
    wait_for(port, "B")
    assert count(store: s, type: :state_change) == 1_000, "a read-only store is a snapshot"
    assert :ok = Causeway.refresh(s)
    assert count(store: s, type: :state_change) == 2_000
    Causeway.close(s)
    assert {:error, %Causeway.Error{kind: :closed}} = Causeway.refresh(s)
  end
end
