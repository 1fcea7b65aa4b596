defmodule Causeway.CallTree do
  @moduledoc """
  A call with its exit and nested calls, as `Causeway.call_tree/2` returns it.

  `duration_ns` is exit timestamp minus entry timestamp (`nil` while the call
  has no recorded exit); `result` is the return value or `{:exception, kind,
  reason}`.
  """
  defstruct [:entry, :exit, :duration_ns, :result, children: []]

  @type t :: %__MODULE__{
          entry: Causeway.Event.t(),
          exit: Causeway.Event.t() | nil,
          duration_ns: non_neg_integer() | nil,
          result: term(),
          children: [t()]
        }

  @doc false
  def from_native({entry, exit, children}) do
    entry = Causeway.Event.from_native(entry)
    exit = if exit, do: Causeway.Event.from_native(exit)

    %__MODULE__{
      entry: entry,
      exit: exit,
      duration_ns: if(exit, do: exit.timestamp - entry.timestamp),
      result: if(exit, do: exit.data, else: :no_exit_recorded),
      children: Enum.map(children, &from_native/1)
    }
  end

  @default_lines 1_000
  @default_indent 32

  @doc """
  Renders the tree as indented text, one call per line, in time linear in
  the lines printed. `opts`: `:max_lines` (default #{@default_lines}, or
  `:infinity`) — calls past it are left out and counted on a last line;
  `:max_indent` (default #{@default_indent}) — deeper calls stop moving right
  and show their depth instead (`·[depth 5000]`). An integer second argument
  is the starting indent (as before).
  """
  @spec format(t(), non_neg_integer() | keyword()) :: String.t()
  def format(tree, opts \\ [])

  def format(%__MODULE__{} = t, indent) when is_integer(indent) and indent >= 0,
    do: format(t, indent: indent)

  def format(%__MODULE__{} = t, opts) when is_list(opts) do
    opts =
      Causeway.Options.keyword!(
        opts,
        [indent: 0, max_lines: @default_lines, max_indent: @default_indent],
        "Causeway.CallTree.format/2"
      )

    indent = Causeway.Options.int!(opts[:indent], :indent, 0..1_000)
    max_indent = Causeway.Options.int!(opts[:max_indent], :max_indent, 0..1_000)

    max_lines =
      case opts[:max_lines] do
        :infinity -> :infinity
        n -> Causeway.Options.int!(n, :max_lines, 1..0xFFFF_FFFF_FFFF_FFFF)
      end

    {lines, _printed, left} = walk([{t, indent}], [], 0, max_lines, max_indent, 0)

    lines =
      if left > 0,
        do: [
          "… #{left} more call#{if left > 1, do: "s"} not shown (max_lines: #{max_lines})" | lines
        ],
        else: lines

    lines |> Enum.reverse() |> Enum.intersperse("\n") |> IO.iodata_to_binary()
  end

  # Depth-first with an explicit stack: no recursion on the tree's depth, no
  # string rebuilt per level. Past `max` lines it only counts what is left.
  defp walk([], acc, printed, _max, _max_indent, left), do: {acc, printed, left}

  defp walk([{t, depth} | rest], acc, printed, max, max_indent, left) do
    stack = Enum.reduce(Enum.reverse(t.children), rest, &[{&1, depth + 1} | &2])

    if max != :infinity and printed >= max do
      walk(stack, acc, printed, max, max_indent, left + 1)
    else
      walk(stack, [line(t, depth, max_indent) | acc], printed + 1, max, max_indent, left)
    end
  end

  defp line(t, depth, max_indent) do
    pad =
      if depth > max_indent,
        do: [String.duplicate("  ", max_indent), "·[depth #{depth}] "],
        else: String.duplicate("  ", depth)

    [
      pad,
      name(t.entry),
      "(",
      args(t.entry.data),
      ") → ",
      Causeway.Event.short(t.result),
      duration(t.duration_ns),
      case Causeway.Event.location(t.entry) do
        nil -> ""
        loc -> "  " <> loc
      end
    ]
  end

  defp name(%{module: m, function: f}) when is_atom(m), do: "#{inspect(m)}.#{f}"
  defp name(%{module: m, function: f}), do: "#{m}.#{f}"

  # recorded args are whatever `Runtime.function_entry/3` was given: an
  # improper list prints its tail as `| tail`, as Elixir writes it
  defp args([]), do: ""
  defp args([last]), do: Causeway.Event.short(last)
  defp args([h | t]) when is_list(t), do: [Causeway.Event.short(h), ", " | args(t)]
  defp args([h | t]), do: [Causeway.Event.short(h), " | ", Causeway.Event.short(t)]
  defp args(other), do: Causeway.Event.short(other)

  defp duration(nil), do: "  (no exit recorded)"
  defp duration(ns) when ns < 10_000, do: "  [#{ns} ns]"
  defp duration(ns) when ns < 10_000_000, do: "  [#{Float.round(ns / 1000, 1)} µs]"
  defp duration(ns), do: "  [#{Float.round(ns / 1_000_000, 2)} ms]"

  defimpl Inspect do
    def inspect(t, _opts) do
      "#Causeway.CallTree<\n" <> Causeway.CallTree.format(t, indent: 1, max_lines: 50) <> "\n>"
    end
  end
end
