defmodule Causeway.Test.JSONParser do
  @moduledoc false
  # A strict JSON parser for the tests (OTP 25 has no :json): it fails on
  # anything that is not valid JSON, so the exports are checked for real.

  def parse!(s) when is_binary(s) do
    {v, rest} = value(skip(s))

    case skip(rest) do
      "" -> v
      other -> raise ArgumentError, "trailing data: #{String.slice(other, 0, 20)}"
    end
  end

  defp skip(<<c, r::binary>>) when c in [?\s, ?\n, ?\r, ?\t], do: skip(r)
  defp skip(r), do: r

  defp value(<<?{, r::binary>>), do: object(skip(r), %{})
  defp value(<<?[, r::binary>>), do: array(skip(r), [])
  defp value(<<?", r::binary>>), do: string(r, [])
  defp value(<<"true", r::binary>>), do: {true, r}
  defp value(<<"false", r::binary>>), do: {false, r}
  defp value(<<"null", r::binary>>), do: {nil, r}
  defp value(r), do: number(r)

  defp object(<<?}, r::binary>>, acc), do: {acc, r}

  defp object(r, acc) do
    <<?", r::binary>> = r
    {k, r} = string(r, [])
    <<?:, r::binary>> = skip(r)
    {v, r} = value(skip(r))
    acc = Map.put(acc, k, v)

    case skip(r) do
      <<?,, r::binary>> -> object(skip(r), acc)
      <<?}, r::binary>> -> {acc, r}
    end
  end

  defp array(<<?], r::binary>>, acc), do: {Enum.reverse(acc), r}

  defp array(r, acc) do
    {v, r} = value(r)

    case skip(r) do
      <<?,, r::binary>> -> array(skip(r), [v | acc])
      <<?], r::binary>> -> {Enum.reverse([v | acc]), r}
    end
  end

  defp string(<<?", r::binary>>, acc), do: {acc |> Enum.reverse() |> IO.iodata_to_binary(), r}
  defp string(<<?\\, ?", r::binary>>, acc), do: string(r, [?" | acc])
  defp string(<<?\\, ?\\, r::binary>>, acc), do: string(r, [?\\ | acc])
  defp string(<<?\\, ?/, r::binary>>, acc), do: string(r, [?/ | acc])
  defp string(<<?\\, ?n, r::binary>>, acc), do: string(r, [?\n | acc])
  defp string(<<?\\, ?r, r::binary>>, acc), do: string(r, [?\r | acc])
  defp string(<<?\\, ?t, r::binary>>, acc), do: string(r, [?\t | acc])
  defp string(<<?\\, ?b, r::binary>>, acc), do: string(r, [?\b | acc])
  defp string(<<?\\, ?f, r::binary>>, acc), do: string(r, [?\f | acc])

  defp string(<<?\\, ?u, h::binary-size(4), r::binary>>, acc),
    do: string(r, [<<String.to_integer(h, 16)::utf8>> | acc])

  defp string(<<c, _::binary>>, _) when c < 0x20,
    do: raise(ArgumentError, "control character in string")

  defp string(<<c::utf8, r::binary>>, acc), do: string(r, [<<c::utf8>> | acc])

  defp number(r) do
    case Regex.run(~r/^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/, r) do
      [n | _] ->
        rest = binary_part(r, byte_size(n), byte_size(r) - byte_size(n))

        v =
          if String.contains?(n, [".", "e", "E"]),
            do: String.to_float(normalize(n)),
            else: String.to_integer(n)

        {v, rest}

      nil ->
        raise ArgumentError, "invalid JSON at: #{String.slice(r, 0, 20)}"
    end
  end

  defp normalize(n) do
    if String.contains?(n, "."), do: n, else: String.replace(n, ~r/[eE]/, ".0e")
  end
end
