defmodule Causeway.InstrumentDiff do
  @moduledoc false
  # The differential harness of `use Causeway.Instrument`: a construct is
  # compiled twice from one source — plain, and instrumented — into two
  # module names, the same calls are made on both, and everything the caller
  # can observe is compared: compile warnings, results, raised exceptions
  # (struct and message, and what `Exception.blame/3` adds to a
  # FunctionClauseError: the clauses it lists), throws, exits and their full
  # stack traces (module names mapped), and the process stack size wherever
  # a call reports it.
  #
  # A case is a source and a list of calls:
  #
  #   * the source is the text of one or more modules; `@@M@@` is the main
  #     module's name (write `@@M@@.Helper` for others), and the line
  #     `@@I@@` is where `use Causeway.Instrument` goes in the instrumented
  #     copy (at the top of the first module when absent); `@@I@@` is blank
  #     in the plain copy, so both have the same lines;
  #   * a call is `{function, args}` (applied to the main module) or a
  #     one-argument fn given the main module.
  #
  # Each call runs in a fresh process. The modules are written to a
  # directory and loaded from there, so `Exception.blame/3` finds their
  # debug info as it does for a compiled project.

  @plain "CausewayDiff.Plain"
  @instr "CausewayDiff.Instr"

  @doc "Compiles `source` both ways; returns the differences found (a list of strings)."
  def run(name, source, calls, opts \\ []) do
    use_line = Keyword.get(opts, :use, "use Causeway.Instrument")
    {plain_mod, plain_warn} = compile(source, name, @plain, "")
    {instr_mod, instr_warn} = compile(source, name, @instr, use_line)

    warn_diff =
      if normalize(instr_warn) == normalize(plain_warn),
        do: [],
        else: ["compile warnings differ:\nplain:\n#{plain_warn}\ninstrumented:\n#{instr_warn}"]

    call_diffs =
      for {call, i} <- Enum.with_index(calls),
          plain = outcome(plain_mod, call),
          instr = outcome(instr_mod, call),
          normalize(plain) != normalize(instr) do
        "call #{i} (#{label(call)}) differs:\nplain:        #{inspect(normalize(plain), pretty: true, limit: :infinity)}\n" <>
          "instrumented: #{inspect(normalize(instr), pretty: true, limit: :infinity)}"
      end

    warn_diff ++ call_diffs
  end

  @doc "Where the compiled cases are written (remove it when done)."
  def dir, do: Path.join(System.tmp_dir!(), "causeway-diff-#{:os.getpid()}")

  @doc "The module names a case compiles to: `{plain, instrumented}`."
  def modules(name), do: {Module.concat(@plain, name), Module.concat(@instr, name)}

  defp label({f, args}), do: "#{f}#{inspect(args)}"
  defp label(fun) when is_function(fun), do: inspect(fun)

  defp compile(source, name, prefix, use_line) do
    main = "#{prefix}.#{name}"

    text =
      if String.contains?(source, "@@I@@"),
        do: source,
        else: String.replace(source, ~r/(defmodule @@M@@ do)/, "\\1 @@I@@", global: false)

    text = text |> String.replace("@@M@@", main) |> String.replace("@@I@@", use_line)

    dir = dir()
    File.mkdir_p!(dir)
    parent = self()

    warnings =
      ExUnit.CaptureIO.capture_io(:stderr, fn ->
        modules = Code.compile_string(text, "test/diff/#{Macro.underscore(name)}.ex")
        send(parent, {:compiled, modules})
      end)

    modules =
      receive do
        {:compiled, modules} -> modules
      end

    # reload each module from a file so that its debug info can be found
    for {mod, binary} <- modules do
      path = Path.join(dir, "#{mod}.beam")
      File.write!(path, binary)
      :code.purge(mod)
      :code.delete(mod)
      {:module, ^mod} = :code.load_abs(String.to_charlist(Path.rootname(path)))
    end

    {String.to_atom("Elixir." <> main), warnings}
  end

  defp outcome(mod, call) do
    parent = self()
    ref = make_ref()

    {pid, mref} =
      spawn_monitor(fn ->
        result =
          try do
            {:ok, invoke(mod, call)}
          catch
            kind, reason ->
              st = __STACKTRACE__
              {blamed, st} = Exception.blame(kind, reason, st)
              {kind, blamed, message(kind, blamed), st}
          end

        send(parent, {ref, result})
      end)

    receive do
      {^ref, result} ->
        Process.demonitor(mref, [:flush])
        result

      {:DOWN, ^mref, :process, ^pid, reason} ->
        {:process_down, reason}
    after
      60_000 -> {:timeout, Process.exit(pid, :kill)}
    end
  end

  defp invoke(mod, {f, args}), do: apply(mod, f, args)
  defp invoke(mod, fun) when is_function(fun, 1), do: fun.(mod)

  defp message(:error, e) when is_exception(e), do: Exception.format_banner(:error, e)
  defp message(_, _), do: nil

  @doc false
  # The instrumented module names read as the plain ones; pids, refs and
  # funs compared by what they are.
  def normalize(term) when is_binary(term), do: String.replace(term, @instr, @plain)

  def normalize(term) when is_atom(term) and term not in [nil, true, false] do
    s = Atom.to_string(term)
    if String.contains?(s, @instr), do: String.to_atom(normalize(s)), else: term
  end

  def normalize(term) when is_list(term), do: normalize_list(term)

  def normalize(term) when is_tuple(term),
    do: term |> Tuple.to_list() |> normalize_list() |> List.to_tuple()

  def normalize(%{} = term),
    do: term |> Map.to_list() |> Map.new(fn {k, v} -> {normalize(k), normalize(v)} end)

  def normalize(term) when is_pid(term), do: :pid
  def normalize(term) when is_reference(term), do: :ref
  def normalize(term) when is_port(term), do: :port

  def normalize(term) when is_function(term) do
    info = Function.info(term)
    {:fun, normalize(info[:module]), normalize(info[:name]), info[:arity]}
  end

  def normalize(term), do: term

  defp normalize_list([h | t]), do: [normalize(h) | normalize_list(t)]
  defp normalize_list([]), do: []
  defp normalize_list(tail), do: normalize(tail)
end
