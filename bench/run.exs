# `mix bench`: runs every bench/*_bench.exs (or those named on the command line:
# `mix bench pipeline`).
Code.require_file("harness.exs", __DIR__)

only = System.argv()

for file <- Path.wildcard(Path.join(__DIR__, "*_bench.exs")) |> Enum.sort(),
    only == [] or Enum.any?(only, &String.contains?(Path.basename(file), &1)) do
  IO.puts("\n# #{Path.basename(file)}")
  Code.require_file(file)
end
