defmodule Causeway.Error do
  @moduledoc """
  An error from Causeway's native core or its storage.

  `kind` says what kind of failure it was, so callers can match on it:

    * `:path` — a directory that cannot be used (not a directory, not writable)
    * `:incompatible` — a directory holding something that is not a Causeway
      store this version reads (it reads schema versions 1 to 5: an older
      store opens as it is and a writable open marks it version 5, which an
      older Causeway then refuses with this kind)
    * `:corrupt` — a store whose files are damaged or missing (a truncated or
      deleted SST, a damaged MANIFEST, a write-ahead log that lost flushed
      events); the message names the file
    * `:busy` — a directory another writer holds (another VM, or another
      instance in this one, under any path that names the directory: a
      symlink or a bind mount is the same directory): open it with
      `read_only: true` instead
    * `:storage` — storage that fails (a full disk, I/O errors), also what
      `Causeway.flush/0` returns while the store is failing
    * `:not_running` — no Causeway instance of that name (or the name is
      registered to a process that is not one; nothing is sent to it)
    * `:already_started` — `start_link/1` with a name already taken
    * `:invalid_argument` — options the native side refused, e.g. rings
      too large for the machine or the memory budget
    * `:timeout` — a process that did not answer in time (`Causeway.watch/2`
      of a non-OTP or blocked process, a `flush/2` past its timeout)
    * `:io`, `:closed`, `:not_found`, `:read_only`, `:not_connected`,
      `:remote`, `:watch`

      iex> %Causeway.Error{kind: :not_found, message: "event 1"} |> Exception.message()
      "not_found: event 1"

  ## Storage faults

  * **Damaged write-ahead log.** A writable open replays the log in RocksDB's
    absolute-consistency mode: any damaged record stops it. The store is
    then read (read-only) up to the first damaged record, and compared with
    its durability mark — the newest event a `Causeway.flush/0` made
    durable, kept in the file `CAUSEWAY-DURABLE` beside the database. If
    every flushed event is there, the damage is a log tail written after the
    last flush (a process killed mid-write, a full disk): the store opens,
    and `Causeway.health/0` shows a `:wal_damage` alert saying what was
    given up. If flushed events are missing — a log cut, overwritten or
    deleted — the open fails with `:corrupt`, naming the log files; nothing
    is silently dropped. Deleting `CAUSEWAY-DURABLE` accepts the loss and
    lets the store open. A read-only open replays in point-in-time mode (a
    live writer's log always ends mid-record) and makes the same check.
  * **Full disk.** Writes fail, the batches are retried and then dropped and
    counted (`dropped.storage`, or `dropped.ring_full` once the rings fill),
    `Causeway.flush/0` returns `{:error, %Causeway.Error{kind: :storage}}` at
    once, and the writer reopens the store every 50 ms to 2 s; queries keep
    reading a read-only view meanwhile. When space comes back, writing
    resumes by itself. RocksDB's info logs are bounded (3 files of 1 MiB,
    warnings only) and its write-ahead log to 64 MiB, so a store does not
    fill the freed space itself.
  * **A directory another writer holds** is `:busy`. Within one VM the
    directory is told by its device and inode, not by the path it was
    named by: RocksDB's own check compares lock file names, and two writers
    on one directory delete each other's files. A read-only open next
    to a live writer retries (up to 5 s) the states in which the writer has
    just replaced a file, and never reports them as corruption; a
    read-only store sees what existed when it opened, until
    `Causeway.refresh/1`.
  """
  defexception [:kind, :message]

  @type t :: %__MODULE__{kind: atom(), message: String.t()}

  @impl true
  def message(%__MODULE__{kind: kind, message: message}), do: "#{kind}: #{message}"

  @doc false
  def from_native({kind, message}) when is_atom(kind) and is_binary(message),
    do: %__MODULE__{kind: kind, message: message}

  def from_native(other), do: %__MODULE__{kind: :error, message: inspect(other)}
end
