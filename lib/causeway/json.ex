defmodule Causeway.JSON do
  @moduledoc """
  A small JSON encoder (no Jason here): maps with atom or string keys, lists,
  strings, numbers, booleans and `nil`. Other terms are encoded as their
  `inspect/1` string.

      iex> Causeway.JSON.encode!(%{a: [1, 2.5, "x\\n"], b: nil})
      ~s({"a":[1,2.5,"x\\\\n"],"b":null})
  """

  @doc "Encodes `term` as JSON iodata."
  @spec encode_to_iodata(term()) :: iodata()
  def encode_to_iodata(term), do: value(term)

  @doc "Encodes `term` as a JSON string."
  @spec encode!(term()) :: String.t()
  def encode!(term), do: term |> value() |> IO.iodata_to_binary()

  defp value(nil), do: "null"
  defp value(true), do: "true"
  defp value(false), do: "false"
  defp value(n) when is_integer(n), do: Integer.to_string(n)

  defp value(f) when is_float(f) do
    if f == Float.round(f) and abs(f) < 1.0e15,
      do: Integer.to_string(trunc(f)),
      else: :erlang.float_to_binary(f, [:short])
  end

  defp value(a) when is_atom(a), do: string(Atom.to_string(a))
  defp value(s) when is_binary(s), do: string(s)

  defp value(m) when is_map(m) and not is_struct(m) do
    pairs = Enum.map(m, fn {k, v} -> [string(key(k)), ?:, value(v)] end)
    [?{, Enum.intersperse(pairs, ?,), ?}]
  end

  defp value(l) when is_list(l), do: [?[, Enum.intersperse(Enum.map(l, &value/1), ?,), ?]]
  defp value(other), do: string(inspect(other))

  defp key(k) when is_binary(k), do: k
  defp key(k) when is_atom(k), do: Atom.to_string(k)
  defp key(k), do: inspect(k)

  defp string(s) do
    s = if String.valid?(s), do: s, else: inspect(s)
    [?", escape(s, ""), ?"]
  end

  defp escape(<<>>, acc), do: acc
  defp escape(<<?", rest::binary>>, acc), do: escape(rest, acc <> "\\\"")
  defp escape(<<?\\, rest::binary>>, acc), do: escape(rest, acc <> "\\\\")
  defp escape(<<?\n, rest::binary>>, acc), do: escape(rest, acc <> "\\n")
  defp escape(<<?\r, rest::binary>>, acc), do: escape(rest, acc <> "\\r")
  defp escape(<<?\t, rest::binary>>, acc), do: escape(rest, acc <> "\\t")

  defp escape(<<c, rest::binary>>, acc) when c < 0x20,
    do: escape(rest, acc <> "\\u" <> String.pad_leading(Integer.to_string(c, 16), 4, "0"))

  defp escape(<<c::utf8, rest::binary>>, acc), do: escape(rest, acc <> <<c::utf8>>)
end
