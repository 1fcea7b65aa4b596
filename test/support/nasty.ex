defmodule Causeway.Nasty do
  @moduledoc false
  # A small generator of nasty terms for property tests of the public API:
  # huge and negative integers, floats, invalid UTF-8 and sub-binaries,
  # bitstrings, improper lists, deep nesting, big maps, pids, refs and ports of
  # this node and of a fake remote node, funs and closures over large data —
  # and, mixed in, values that are valid for the argument at hand. Seeded with
  # `:rand` so a failing run can be replayed. Creates no atoms.

  @atoms [
    nil,
    true,
    false,
    :ok,
    :error,
    :infinity,
    :all,
    :new,
    :_,
    :asc,
    :desc,
    :global,
    :health,
    :backpressure,
    :function_entry,
    :state_change,
    :nasty_unknown,
    Causeway,
    Causeway.Nasty,
    Enum,
    :"with space",
    :é
  ]

  @doc "Seeds the generator of the calling process."
  def seed(seed), do: :rand.seed(:exsss, {seed, seed * 7 + 1, seed * 13 + 3})

  @doc "One random element of `list`."
  def pick(list), do: Enum.at(list, :rand.uniform(length(list)) - 1)

  @doc "A nasty term; `depth` bounds the nesting of the structured ones."
  def term(depth \\ 2) do
    case :rand.uniform(if depth > 0, do: 26, else: 18) do
      1 ->
        pick([0, 1, -1, 2, 255, 256, 65_535, 2 ** 31, 2 ** 32])

      2 ->
        pick([2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64, 2 ** 200, -(2 ** 64), -(2 ** 63)])

      3 ->
        pick([0.0, -0.0, 1.5, -1.0e300, 1.0e300, 3.14])

      4 ->
        pick(@atoms)

      5 ->
        pick(["", "ok", "a/b", "_causeway", "é", String.duplicate("x", 5_000)])

      6 ->
        pick([<<0xFF, 0xFE>>, <<0>>, "nul\0byte", <<0xC3>>])

      7 ->
        sub_binary()

      8 ->
        pick([<<1::3>>, <<255, 1::1>>])

      9 ->
        pick([self(), fake_remote_pid(), spawn(fn -> :ok end)])

      10 ->
        pick([make_ref(), fake_remote_ref()])

      11 ->
        port()

      12 ->
        pick([fn -> :ok end, fn x -> x end, &Enum.map/2, closure_over_large_data()])

      13 ->
        pick([[], [1 | 2], [:a | :b], ~c"abc", [1, [2, [3 | 4]]]])

      14 ->
        deep(pick([10, 1_000, 10_000]))

      15 ->
        pick([%{}, %{a: 1}, %{"k" => self()}, %{{1, 2} => [3]}])

      16 ->
        pick([{}, {:ok}, {:ok, 1}, {:error, "x"}, {1, 2, 3}, {:module, Enum}])

      17 ->
        pick([~D[2026-01-01], ~T[12:00:00], DateTime.utc_now(), ~N[2026-01-01 00:00:00]])

      18 ->
        pick([[a: 1], [limit: -1], [limit: :infinity], [bogus: 1], [{:pid, self()}]])

      19 ->
        big_map(pick([1_000, 100_000]))

      20 ->
        Enum.map(1..:rand.uniform(4), fn _ -> term(depth - 1) end)

      21 ->
        List.to_tuple(Enum.map(1..:rand.uniform(4), fn _ -> term(depth - 1) end))

      22 ->
        Map.new(1..:rand.uniform(3), fn _ -> {term(0), term(depth - 1)} end)

      23 ->
        Enum.map(1..:rand.uniform(3), fn _ -> {pick(@atoms), term(depth - 1)} end)

      24 ->
        [term(depth - 1) | term(depth - 1)]

      25 ->
        %{__struct__: pick([Causeway.Store, Causeway.Tracer, Causeway.Event, URI]), x: term(0)}

      26 ->
        {pick(@atoms), pick(@atoms), term(depth - 1)}
    end
  end

  @doc "A keyword list mixing `valid` {key, value} pairs, nasty values and unknown keys."
  def opts([]), do: if(:rand.uniform(2) == 1, do: [], else: [{pick(@atoms), term()}])

  def opts(valid) do
    n = :rand.uniform(4) - 1

    for _ <- 1..n//1 do
      case :rand.uniform(4) do
        1 -> pick(valid)
        2 -> {elem(pick(valid), 0), term()}
        3 -> {pick(@atoms), term()}
        4 -> {elem(pick(valid), 0), term(0)}
      end
    end
    |> then(fn kw -> if :rand.uniform(12) == 1, do: term(), else: kw end)
  end

  @doc "Either a valid value (one of `valid`) or a nasty term, about half and half."
  def arg(valid) do
    if valid != [] and :rand.uniform(2) == 1, do: pick(valid), else: term()
  end

  defp sub_binary do
    whole = for _ <- 1..20, into: <<>>, do: <<:rand.uniform(256) - 1>>
    <<_::binary-size(3), rest::binary-size(10), _::binary>> = whole
    rest
  end

  defp deep(0), do: []
  defp deep(n), do: Enum.reduce(1..n, [], fn _, acc -> [acc] end)

  defp big_map(n), do: Map.new(1..n, &{&1, &1})

  defp closure_over_large_data do
    data = :binary.copy("z", 100_000)
    fn -> byte_size(data) end
  end

  defp port do
    case Port.list() do
      [p | _] -> p
      [] -> self()
    end
  end

  # pids and refs of a node that is not connected (external term format
  # with another node name: NEW_PID_EXT / NEWER_REFERENCE_EXT)
  defp fake_remote_pid do
    node = "nasty@nowhere"

    <<131, 88, 119, byte_size(node)::8, node::binary, 42::32, 0::32, 1::32>>
    |> :erlang.binary_to_term()
  end

  defp fake_remote_ref do
    node = "nasty@nowhere"

    <<131, 90, 3::16, 119, byte_size(node)::8, node::binary, 1::32, 1::32, 2::32, 3::32>>
    |> :erlang.binary_to_term()
  end
end
