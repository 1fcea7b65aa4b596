# The NIF compiler must exist before Mix compiles lib/ (it runs first), so it is
# loaded from its file here rather than found among lib/'s compiled modules.
Code.require_file("lib/mix/tasks/compile.causeway_native.ex", __DIR__)

defmodule Causeway.MixProject do
  use Mix.Project

  def project do
    [
      app: :causeway,
      version: "0.1.0",
      elixir: "~> 1.14",
      compilers: [:causeway_native] ++ Mix.compilers(),
      start_permanent: Mix.env() == :prod,
      deps: [],
      aliases: aliases(),
      elixirc_paths: elixirc_paths(Mix.env()),
      test_coverage: [ignore_modules: [Causeway.Native]],
      docs: [main: "Causeway"]
    ]
  end

  def application do
    [extra_applications: [:logger], mod: {Causeway.Application, []}]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  defp aliases do
    [
      bench: ["run bench/run.exs"]
    ]
  end
end
