defmodule Causeway.Event do
  @moduledoc """
  One recorded event.

  | field        | meaning |
  |--------------|---------|
  | `id`         | unique, time-ordered id (per node) |
  | `type`       | `:function_entry`, `:function_exit`, `:message_send`, `:message_receive`, `:state_change`, `:process_spawn`, `:process_exit` or `:error` |
  | `timestamp`  | Erlang monotonic time in nanoseconds at capture (`System.monotonic_time(:nanosecond)`) |
  | `wall_time`  | UTC `DateTime` at capture |
  | `node`       | the node that captured it |
  | `pid`        | the process it is about |
  | `call_id`    | for function entries and exits: the call (= the entry's id) |
  | `parent_id`  | the cause known at capture: the calling function's entry, the message being handled, ... |
  | `module`, `function`, `arity` | for function events |
  | `data`       | what the event carries, by type (below) |
  | `file`, `line` | where the function is defined (its first clause), for a `function_entry` of code compiled with `use Causeway.Instrument` whose module is available here; `nil` otherwise |
  | `source`     | `:runtime` (instrumented code), `:tracer` (`Causeway.trace/2`) or `:watch` (`Causeway.watch/2`) |
  | `links`      | `[{kind, event_id}]` made by the correlator, e.g. `{:completes, entry_id}` |

  `data` by type: `function_entry` → the argument list; `function_exit` → the
  return value, or `{:exception, kind, reason}`; `message_send` → `%{to: pid,
  message: term}` (`to` is the registered name, `name` or `{name, node}`, of a
  traced send to a name); `message_receive` → `%{from: pid | nil, message: term}`;
  `state_change` → `%{old: term, new: term}`; `process_spawn` → `%{child: pid}`;
  `process_exit` → `%{reason: term}`; `error` → `%{kind: k, reason: r,
  stacktrace: st}`.

  Terms larger than the capture budget hold `{:truncated, byte_size}` (a
  binary), `{:truncated, :max_bytes}` (the rest of a list, tuple or map) or
  `{:truncated, :max_depth}` markers; redacted keys hold `:redacted`. A fun
  is kept by name, `{:fun, "#Fun<m.i.u>"}` or `{:fun, "&m:f/a"}`, never with
  the data it closes over.

  Reading a store written by another VM creates no atoms (unless it was
  opened with `Causeway.open(dir, atoms: :create)`, within its atom budget):
  an atom this VM does not have comes back as its name, a string (a module
  `"Elixir.Decimal"`, a key `"coef"`), and a term the reader cannot rebuild at all as
  `{:undecodable, bytes}` (its external term format). Printing an event
  shows a struct of a module not available here, or with field names this
  VM lacks, as a `Causeway.Foreign` (`%Decimal{coef: 75, …}`), never an
  inspection error.
  """

  defstruct [
    :id,
    :type,
    :timestamp,
    :wall_time,
    :node,
    :pid,
    :call_id,
    :parent_id,
    :module,
    :function,
    :arity,
    :data,
    :source,
    :file,
    :line,
    links: []
  ]

  @type type ::
          :function_entry
          | :function_exit
          | :message_send
          | :message_receive
          | :state_change
          | :process_spawn
          | :process_exit
          | :error

  @type t :: %__MODULE__{
          id: non_neg_integer(),
          type: type(),
          timestamp: integer(),
          wall_time: DateTime.t(),
          node: atom() | String.t(),
          pid: pid() | String.t(),
          call_id: non_neg_integer() | nil,
          parent_id: non_neg_integer() | nil,
          module: module() | String.t() | nil,
          function: atom() | String.t() | nil,
          arity: non_neg_integer() | nil,
          data: term(),
          source: :runtime | :tracer | :watch,
          file: String.t() | nil,
          line: pos_integer() | nil,
          links: [{atom(), non_neg_integer()}] | nil
        }

  @types ~w(function_entry function_exit message_send message_receive state_change
            process_spawn process_exit error)a

  @doc "Every event type."
  @spec types() :: [type()]
  def types, do: @types

  @doc false
  # Whether `e` is a whole event: the struct with each of its fields, and a
  # timestamp and wall time to place it by (a map that only names the struct,
  # `%{__struct__: Causeway.Event}`, matches `%Causeway.Event{}` too).
  def whole?(%__MODULE__{timestamp: t, wall_time: %DateTime{}} = e) when is_integer(t),
    do: Map.keys(e) == Map.keys(__struct__())

  def whole?(_), do: false

  @doc false
  # Events are built as structs by the NIF; this is the one place that says
  # so. A function entry of instrumented code gets the file and line of the
  # function's first clause, which `use Causeway.Instrument` keeps in the
  # module (a persisted attribute, known at compile time: nothing is
  # captured or stored per event for it).
  def from_native(%__MODULE__{type: :function_entry, source: :runtime, module: m} = e)
      when is_atom(m) and m != nil do
    case Map.get(locations(m), {e.function, e.arity}) do
      {file, line} -> %{e | file: file, line: line}
      nil -> e
    end
  end

  def from_native(%__MODULE__{} = e), do: e

  @doc false
  # `from_native/1` of each event of a list; the list itself when no event
  # gets a location (a query of 100 000 events rebuilds no list for nothing).
  def from_native_all(events) when is_list(events) do
    if Enum.any?(events, &located?/1), do: Enum.map(events, &from_native/1), else: events
  end

  defp located?(%__MODULE__{type: :function_entry, source: :runtime, module: m})
       when is_atom(m) and m != nil,
       do: locations(m) != %{}

  defp located?(_), do: false

  @doc false
  # {function, arity} => {file, line} of an instrumented module (empty when
  # it is not one, or not available here), cached per module.
  def locations(module) do
    key = {__MODULE__, :locations, module}

    case :persistent_term.get(key, nil) do
      nil ->
        found =
          with true <- Code.ensure_loaded?(module),
               attrs when is_list(attrs) <- module.module_info(:attributes),
               [_ | _] = lists <- Keyword.get_values(attrs, :causeway_locations) do
            # a persisted accumulating attribute: one entry per value
            for {f, a, file, line} <- List.flatten(lists), into: %{}, do: {{f, a}, {file, line}}
          else
            _ -> %{}
          end

        :persistent_term.put(key, found)
        found

      found ->
        found
    end
  rescue
    _ -> %{}
  end

  @doc "`file:line` of an event from instrumented code, or `nil`."
  @spec location(t()) :: String.t() | nil
  def location(%__MODULE__{file: file, line: line}) when is_binary(file) and is_integer(line),
    do: "#{file}:#{line}"

  def location(_), do: nil

  @doc "`Module.function/arity` of a function event, as a string (`nil` otherwise)."
  @spec mfa_string(t()) :: String.t() | nil
  def mfa_string(%__MODULE__{module: nil}), do: nil

  def mfa_string(%__MODULE__{module: m, function: f, arity: a}) do
    mod = if is_atom(m), do: inspect(m), else: to_string(m)
    "#{mod}.#{f}/#{a}"
  end

  @doc "A one-line human summary of the event."
  @spec summary(t()) :: String.t()
  def summary(%__MODULE__{} = e) do
    case e.type do
      :function_entry -> "call #{mfa_string(e)} #{short(e.data)}"
      :function_exit -> "return #{mfa_string(e)} → #{short(e.data)}"
      :message_send -> "send #{short(e.data.message)} to #{inspect(e.data.to)}"
      :message_receive -> "receive #{short(e.data.message)}" <> from(e.data.from)
      :state_change -> "state #{short(e.data.old)} → #{short(e.data.new)}"
      :process_spawn -> "spawn #{inspect(e.data.child)}"
      :process_exit -> "exit #{short(e.data.reason)}"
      :error -> "error #{inspect(e.data.kind)} #{short(e.data.reason)}"
      other -> "#{other} #{short(e.data)}"
    end
  end

  defp from(nil), do: ""
  defp from(pid), do: " from #{inspect(pid)}"

  @doc false
  def short(term),
    do:
      term
      |> Causeway.Foreign.sanitize()
      |> inspect(limit: 8, printable_limit: 60, width: :infinity, charlists: :as_lists)

  defimpl Inspect do
    import Inspect.Algebra

    def inspect(e, opts) do
      time =
        case e.wall_time do
          %DateTime{} = t -> t |> DateTime.to_time() |> Time.to_iso8601()
          _ -> "?"
        end

      concat([
        "#Causeway.Event<",
        time,
        " ",
        to_doc(e.pid, opts),
        " ",
        Causeway.Event.summary(e),
        " id=",
        Integer.to_string(e.id || 0),
        ">"
      ])
    end
  end
end
