defmodule Mix.Tasks.Causeway.Top do
  @shortdoc "Shows Causeway's live dashboard, refreshed every second"
  @moduledoc """
  Shows the metrics dashboard of a Causeway instance, redrawn every second until
  stopped (Ctrl-C).

      mix causeway.top                         # the instance your app starts (runs the app)
      mix causeway.top --node app@host --cookie secret   # an instance on a running node
      mix causeway.top --demo                  # with the demo workload running, to look around
      mix causeway.top --cluster --node app@host --cookie secret   # one row per node, and totals

  Options: `--instance NAME` (default `Causeway`), `--interval MS`, `--count N`
  (stop after N frames), `--no-clear` (append frames instead of redrawing).
  """
  use Mix.Task

  @impl true
  def run(argv) do
    {opts, _, _} =
      OptionParser.parse(argv,
        strict: [
          node: :string,
          cookie: :string,
          instance: :string,
          interval: :integer,
          count: :integer,
          clear: :boolean,
          demo: :boolean,
          cluster: :boolean
        ]
      )

    instance = if opts[:instance], do: Module.concat([opts[:instance]]), else: Causeway

    node =
      case opts[:node] do
        nil ->
          Mix.Task.run("app.start")
          nil

        name ->
          connect!(String.to_atom(name), opts[:cookie])
      end

    if opts[:demo], do: start_demo()

    Causeway.Top.run(
      instance: instance,
      node: node,
      interval_ms: opts[:interval] || 1_000,
      count: opts[:count] || :infinity,
      clear: Keyword.get(opts, :clear, true),
      cluster: Keyword.get(opts, :cluster, false)
    )
  end

  defp connect!(node, cookie) do
    unless Node.alive?() do
      {:ok, _} = Node.start(:"causeway_top_#{System.unique_integer([:positive])}", :shortnames)
    end

    if cookie, do: Node.set_cookie(node, String.to_atom(cookie))
    unless Node.connect(node), do: Mix.raise("could not connect to #{node}")
    node
  end

  defp start_demo do
    dir = Path.join(System.tmp_dir!(), "causeway-top-demo")
    File.rm_rf!(dir)
    {:ok, _} = Causeway.start_link(dir: dir)

    spawn_link(fn ->
      Stream.repeatedly(fn -> Causeway.Demo.run(4, 200) end) |> Stream.run()
    end)
  end
end
