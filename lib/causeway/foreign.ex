defmodule Causeway.Foreign do
  @moduledoc """
  A struct from another VM that this one cannot rebuild: its module is not
  available here, or some of its field names are atoms this VM does not
  have (they come back as strings: a store is read without creating atoms).
  Printing an event shows it as the struct it was, `%Decimal{coef: 75,
  exp: -2, sign: 1}`, instead of a map whose struct protocol would fail.

  `module` is the module's name as a string (`"Decimal"`), `fields` the
  map of the fields as they were read (keys are atoms or strings).
  """
  defstruct [:module, fields: %{}]

  @type t :: %__MODULE__{module: String.t(), fields: map()}

  @width 20

  @doc false
  # `term` with every struct this VM cannot show replaced by a Foreign, at
  # most `depth` levels deep (deeper terms are left as they are).
  def sanitize(term, depth \\ 8)
  def sanitize(term, 0), do: term

  def sanitize(%{__struct__: mod} = m, depth) when not is_struct(mod) do
    fields = m |> Map.delete(:__struct__) |> Map.new(fn {k, v} -> {k, sanitize(v, depth - 1)} end)

    if real_struct?(mod, m),
      do: Map.merge(m, Map.take(fields, Map.keys(m))),
      else: %__MODULE__{module: module_name(mod), fields: fields}
  end

  # printing shows a few entries of each container (`inspect(limit: 8)`):
  # only the first @width of a big map are walked and kept
  def sanitize(m, depth) when is_map(m) and map_size(m) > @width,
    do: m |> Enum.take(@width) |> Map.new() |> sanitize(depth)

  def sanitize(m, depth) when is_map(m),
    do: Map.new(m, fn {k, v} -> {sanitize(k, depth - 1), sanitize(v, depth - 1)} end)

  def sanitize(l, depth) when is_list(l), do: sanitize_list(l, depth, 0)

  def sanitize(t, depth) when is_tuple(t) and tuple_size(t) <= @width,
    do: t |> Tuple.to_list() |> Enum.map(&sanitize(&1, depth - 1)) |> List.to_tuple()

  def sanitize(other, _depth), do: other

  # lists cell by cell (improper ones included), the first @width items only
  defp sanitize_list([x | rest], depth, n) when n < @width,
    do: [sanitize(x, depth - 1) | sanitize_list(rest, depth, n + 1)]

  defp sanitize_list(rest, _depth, _n), do: rest

  defp real_struct?(mod, m) when is_atom(mod) do
    Code.ensure_loaded?(mod) and function_exported?(mod, :__struct__, 0) and
      Enum.all?(Map.keys(m), &is_atom/1) and
      Map.keys(mod.__struct__()) -- Map.keys(m) == []
  rescue
    _ -> false
  end

  defp real_struct?(_mod, _m), do: false

  defp module_name(mod) when is_atom(mod), do: mod |> Atom.to_string() |> module_name()
  defp module_name("Elixir." <> name), do: name
  defp module_name(name) when is_binary(name), do: name
  defp module_name(other), do: inspect(other)

  defimpl Inspect do
    import Inspect.Algebra

    def inspect(%{module: mod, fields: fields}, opts) do
      pairs =
        fields
        |> Enum.sort_by(fn {k, _} -> to_string(k) end)
        |> Enum.map(fn {k, v} -> concat([to_string(k), ": ", to_doc(v, opts)]) end)

      container_doc("%#{mod}{", pairs, "}", opts, fn d, _ -> d end, separator: ",")
    end
  end
end
