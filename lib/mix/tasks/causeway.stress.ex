defmodule Mix.Tasks.Causeway.Stress do
  @shortdoc "Long reliability runs: a SIGKILL crash loop, or a memory soak"
  @moduledoc """
  Reliability runs that take longer than a test suite should:

      mix causeway.stress crash --iterations 100 [--dir DIR] [--seed N]
      mix causeway.stress soak --minutes 10 [--sample-s 5]

  `crash` kills a writing child VM with SIGKILL at random moments and checks
  after each kill that the store opens with every flushed event
  (`Causeway.Stress.CrashLoop`); it exits non-zero on any loss or failed
  open. `soak` runs two producers flat out at default settings and prints
  memory, drops and the backpressure level every few seconds, then a
  verdict (`Causeway.Stress.Soak`); it exits non-zero when memory grows or
  the drop accounting is not exact.
  """
  use Mix.Task

  @impl true
  def run(["crash" | argv]) do
    {opts, _, _} =
      OptionParser.parse(argv, strict: [iterations: :integer, dir: :string, seed: :integer])

    Mix.Task.run("app.start")

    dir =
      opts[:dir] ||
        Path.join(System.tmp_dir!(), "causeway-crash-#{System.unique_integer([:positive])}")

    File.rm_rf!(dir)
    n = opts[:iterations] || 30

    r =
      Causeway.Stress.CrashLoop.run(
        [dir: dir, iterations: n, log: &Mix.shell().info/1] ++
          if(opts[:seed], do: [seed: opts[:seed]], else: [])
      )

    Mix.shell().info(
      "crash loop: #{r.iterations} iterations (#{inspect(r.modes)}), #{r.flushed} events flushed, " <>
        "#{r.losses} lost, #{r.failed_opens} failed opens (seed #{r.seed}, store #{dir})"
    )

    if r.losses > 0 or r.failed_opens > 0, do: Mix.raise("the crash loop lost data")
  end

  def run(["soak" | argv]) do
    {opts, _, _} =
      OptionParser.parse(argv, strict: [minutes: :float, sample_s: :integer, dir: :string])

    Mix.Task.run("app.start")

    %{verdict: v} =
      Causeway.Stress.Soak.run(
        minutes: opts[:minutes] || 10,
        sample_s: opts[:sample_s] || 5,
        dir: opts[:dir] || Path.join(System.tmp_dir!(), "causeway-soak")
      )

    unless v.memory_flat and v.exact, do: Mix.raise("the soak's verdict is negative")
  end

  def run(_),
    do: Mix.raise("usage: mix causeway.stress crash [--iterations N] | soak [--minutes N]")
end
