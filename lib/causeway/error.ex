defmodule Causeway.Error do
  @moduledoc """
  An error from Causeway's native core or its storage.

  `kind` says what kind of failure it was, so callers can match on it:
  `:path` (a directory that cannot be used), `:incompatible` (a directory holding
  something that is not a Causeway store of this version), `:storage`, `:io`,
  `:closed`, `:not_found`, `:invalid_argument`, `:read_only`, `:corrupt`,
  `:busy`, `:timeout`, `:not_running`.

      iex> %Causeway.Error{kind: :not_found, message: "event 1"} |> Exception.message()
      "not_found: event 1"
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
