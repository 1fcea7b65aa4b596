defmodule Causeway.Incident do
  @moduledoc """
  What one trigger of the flight recorder (`persist: {:on_trigger, opts}`)
  wrote to disk.

  | field | |
  |-------|-|
  | `id` | 1, 2, 3, … per store; `Causeway.events(incident: id)` limits a query to it |
  | `trigger` | `:exit` (an abnormal process exit), `:error` (an `error` event), `:slow_call`, `:queue_wait`, `:snapshot` (`Causeway.snapshot/2`) or `:telemetry` |
  | `detail` | what fired it, readable (`"abnormal exit of <0.1.2>@node"`, `"Shop.checkout/1 took 812 ms"`, a snapshot's reason) |
  | `trigger_event` | the id of the event that fired it (`nil` for a snapshot or telemetry) |
  | `time` | when it fired (`DateTime`, UTC) |
  | `first_id`, `last_id` | the span of event ids written for it: its window (from the oldest event kept) to the end of its after-phase |
  | `events`, `bytes` | events and payload bytes written for it (a trigger inside another incident's after-phase shares that incident's writes and counts what it added) |
  | `cone` | whether only the causal cone of the trigger was kept |
  """

  defstruct [
    :id,
    :trigger,
    :detail,
    :trigger_event,
    :time,
    :first_id,
    :last_id,
    events: 0,
    bytes: 0,
    cone: false
  ]

  @type t :: %__MODULE__{
          id: pos_integer(),
          trigger: :exit | :error | :slow_call | :queue_wait | :snapshot | :telemetry,
          detail: String.t(),
          trigger_event: non_neg_integer() | nil,
          time: DateTime.t(),
          first_id: non_neg_integer(),
          last_id: non_neg_integer(),
          events: non_neg_integer(),
          bytes: non_neg_integer(),
          cone: boolean()
        }

  @triggers %{
    "exit" => :exit,
    "error" => :error,
    "slow_call" => :slow_call,
    "queue_wait" => :queue_wait,
    "snapshot" => :snapshot,
    "telemetry" => :telemetry
  }

  # ids count nanoseconds from 2020-01-01 (see the native `ids` module)
  @id_epoch_ns 1_577_836_800_000_000_000

  @doc false
  def from_native(%{} = m) do
    %__MODULE__{
      id: m.id,
      trigger: Map.get(@triggers, m.trigger, :unknown),
      detail: m.detail,
      trigger_event: if(m.trigger_event == 0, do: nil, else: m.trigger_event),
      time: DateTime.from_unix!(m.wall_ns, :nanosecond),
      first_id: m.first_id,
      last_id: m.last_id,
      events: m.events,
      bytes: m.bytes,
      cone: m.cone
    }
  end

  @doc false
  # The wall-clock ns span (since, until) of an incident's event ids.
  def wall_span(%__MODULE__{first_id: first, last_id: last}),
    do: {id_wall_ns(first), id_wall_ns(last) + 63}

  defp id_wall_ns(id), do: Bitwise.band(id, Bitwise.bnot(63)) + @id_epoch_ns

  defimpl Inspect do
    def inspect(i, _opts) do
      "#Causeway.Incident<#{i.id} #{i.trigger} at #{DateTime.to_iso8601(i.time)}: " <>
        "#{i.detail} (#{i.events} events, #{i.bytes} B#{if i.cone, do: ", cone"})>"
    end
  end
end
