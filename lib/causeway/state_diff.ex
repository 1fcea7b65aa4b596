defmodule Causeway.StateDiff do
  @moduledoc """
  The structural difference between two states, as `Causeway.state_diff/1`
  gives it for a `state_change` event: which keys of maps and fields of
  structs were added, removed or changed, recursively; lists and tuples by
  position (a list that grew or shrank has its extra positions added or
  removed); anything else compared as a whole.

      iex> d = Causeway.StateDiff.diff(%{cart: %{items: [:a]}, n: 1}, %{cart: %{items: [:a, :b]}, n: 1})
      iex> d.changes
      [{[:cart, :items, 1], :added, nil, :b}]
      iex> to_string(d)
      "+ cart.items[1]: :b"

  Each change is `{path, :added | :removed | :changed, old, new}`; `path`
  is the list of keys (map keys, struct fields) and integer positions (lists,
  tuples) from the state's root, `[]` when the whole state changed.

  `at/2` reads a value at such a path (maps, structs, keyword lists by key;
  lists and tuples by index), as `Causeway.changes/3` does.
  """

  defstruct changes: []

  @type change :: {[term()], :added | :removed | :changed, term(), term()}
  @type t :: %__MODULE__{changes: [change()]}

  @doc "The difference from `old` to `new`."
  @spec diff(term(), term()) :: t()
  def diff(old, new), do: %__MODULE__{changes: walk(old, new, [])}

  defp walk(same, same, _path), do: []

  defp walk(%s{} = old, %s{} = new, path),
    do: maps(Map.from_struct(old), Map.from_struct(new), path)

  defp walk(%_{} = old, new, path), do: [{Enum.reverse(path), :changed, old, new}]
  defp walk(old, %_{} = new, path), do: [{Enum.reverse(path), :changed, old, new}]

  defp walk(old, new, path) when is_map(old) and is_map(new), do: maps(old, new, path)

  defp walk(old, new, path)
       when is_tuple(old) and is_tuple(new) and tuple_size(old) == tuple_size(new),
       do: positions(Tuple.to_list(old), Tuple.to_list(new), path, 0, [])

  defp walk(old, new, path) when is_list(old) and is_list(new) do
    if proper?(old) and proper?(new),
      do: positions(old, new, path, 0, []),
      else: [{Enum.reverse(path), :changed, old, new}]
  end

  defp walk(old, new, path), do: [{Enum.reverse(path), :changed, old, new}]

  defp maps(old, new, path) do
    keys = Map.keys(old) ++ Enum.reject(Map.keys(new), &Map.has_key?(old, &1))

    keys
    |> Enum.sort()
    |> Enum.reduce([], fn k, acc ->
      case {Map.fetch(old, k), Map.fetch(new, k)} do
        {{:ok, o}, {:ok, n}} -> walk(o, n, [k | path]) |> Enum.reverse(acc)
        {{:ok, o}, :error} -> [{Enum.reverse([k | path]), :removed, o, nil} | acc]
        {:error, {:ok, n}} -> [{Enum.reverse([k | path]), :added, nil, n} | acc]
      end
    end)
    |> Enum.reverse()
  end

  defp positions([o | os], [n | ns], path, i, acc),
    do: positions(os, ns, path, i + 1, Enum.reverse(walk(o, n, [i | path]), acc))

  defp positions([o | os], [], path, i, acc),
    do: positions(os, [], path, i + 1, [{Enum.reverse([i | path]), :removed, o, nil} | acc])

  defp positions([], [n | ns], path, i, acc),
    do: positions([], ns, path, i + 1, [{Enum.reverse([i | path]), :added, nil, n} | acc])

  defp positions([], [], _path, _i, acc), do: Enum.reverse(acc)

  defp proper?([_ | t]), do: proper?(t)
  defp proper?([]), do: true
  defp proper?(_), do: false

  @doc """
  The value at `path` in `term`: `{:ok, value}` or `:error` when the path
  does not lead anywhere. Atoms and other terms look up map keys, struct
  fields and keyword-list keys; integers index lists and tuples (and are map
  keys in maps).
  """
  @spec at(term(), [term()]) :: {:ok, term()} | :error
  def at(term, []), do: {:ok, term}

  def at(%_{} = s, [k | rest]), do: s |> Map.from_struct() |> at([k | rest])

  def at(m, [k | rest]) when is_map(m) do
    case Map.fetch(m, k) do
      {:ok, v} -> at(v, rest)
      :error -> :error
    end
  end

  def at(t, [i | rest]) when is_tuple(t) and is_integer(i) and i >= 0 and i < tuple_size(t),
    do: at(elem(t, i), rest)

  def at(l, [i | rest]) when is_list(l) and is_integer(i) and i >= 0 do
    case Enum.drop(l, i) do
      [v | _] -> at(v, rest)
      _ -> :error
    end
  rescue
    _ -> :error
  end

  def at(l, [k | rest]) when is_list(l) do
    case List.keyfind(l, k, 0) do
      {^k, v} -> at(v, rest)
      _ -> :error
    end
  rescue
    _ -> :error
  end

  def at(_, _), do: :error

  @doc "The path as text: `cart.items[1]`."
  @spec path_string([term()]) :: String.t()
  def path_string([]), do: "(state)"

  def path_string(path) do
    path
    |> Enum.with_index()
    |> Enum.map_join(fn
      {i, _} when is_integer(i) -> "[#{i}]"
      {k, 0} when is_atom(k) -> Atom.to_string(k)
      {k, _} when is_atom(k) -> "." <> Atom.to_string(k)
      {k, _} -> "[#{inspect(k, limit: 5)}]"
    end)
  end

  defimpl String.Chars do
    def to_string(%{changes: []}), do: "(no change)"

    def to_string(%{changes: changes}) do
      Enum.map_join(changes, "\n", fn
        {p, :added, _, n} -> "+ #{Causeway.StateDiff.path_string(p)}: #{short(n)}"
        {p, :removed, o, _} -> "- #{Causeway.StateDiff.path_string(p)}: #{short(o)}"
        {p, :changed, o, n} -> "~ #{Causeway.StateDiff.path_string(p)}: #{short(o)} → #{short(n)}"
      end)
    end

    defp short(t), do: inspect(t, limit: 8, printable_limit: 60)
  end

  defimpl Inspect do
    def inspect(d, _opts), do: "#Causeway.StateDiff<" <> to_string(d) <> ">"
  end
end
