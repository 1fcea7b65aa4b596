# Loaded by mix.exs before lib/ is compiled; the guard keeps lib/'s own
# compilation from defining the module a second time.
unless Code.ensure_loaded?(Mix.Tasks.Compile.CausewayNative) do
  defmodule Mix.Tasks.Compile.CausewayNative do
    @moduledoc """
    Builds Causeway's NIF (`native/causeway_nif`) with `cargo build --release`
    and installs it as `priv/native/causeway_nif.so`.

    It is a no-op when no Rust source, `Cargo.toml` or `Cargo.lock` changed
    since the library was installed. Cargo's target directory lives outside the
    project so that RocksDB (about 14 minutes to compile on 2 cores) is built
    once per machine and shared by every clone:

      * `CAUSEWAY_TARGET_DIR` — the cargo target directory (default:
        `$XDG_CACHE_HOME/causeway/target`, or `~/.cache/causeway/target`);
      * `CAUSEWAY_CARGO` — the cargo executable (default: `cargo` on the
        `PATH`, then `~/.cargo/bin/cargo`).
    """
    use Mix.Task.Compiler

    @shortdoc "Builds the Causeway NIF with cargo"
    @lib "causeway_nif"

    @impl true
    def run(_args) do
      root = project_root()
      priv = Path.join(root, "priv/native")
      File.mkdir_p!(priv)
      # priv/ must exist before Mix links it into _build.
      Mix.Project.build_structure()
      target = Path.join(priv, @lib <> ".so")

      if stale?(root, target) do
        build(root, target)
      else
        {:noop, []}
      end
    end

    @doc "The cargo target directory shared by every clone on this machine."
    def target_dir do
      case System.get_env("CAUSEWAY_TARGET_DIR") do
        dir when is_binary(dir) and dir != "" ->
          Path.expand(dir)

        _ ->
          cache =
            case System.get_env("XDG_CACHE_HOME") do
              dir when is_binary(dir) and dir != "" -> dir
              _ -> Path.join(System.user_home!(), ".cache")
            end

          Path.join(cache, "causeway/target")
      end
    end

    @doc "The cargo executable."
    def cargo do
      System.get_env("CAUSEWAY_CARGO") || System.find_executable("cargo") ||
        Path.join(System.user_home!(), ".cargo/bin/cargo")
    end

    defp project_root, do: Path.expand("../../..", __DIR__)

    defp sources(root) do
      Path.wildcard(Path.join(root, "native/*/src/**/*.rs")) ++
        Path.wildcard(Path.join(root, "native/*/Cargo.toml")) ++
        Enum.filter(
          [Path.join(root, "Cargo.toml"), Path.join(root, "Cargo.lock")],
          &File.exists?/1
        )
    end

    defp stale?(root, target) do
      case File.stat(target, time: :posix) do
        {:ok, %{mtime: built}} ->
          Enum.any?(sources(root), fn src ->
            case File.stat(src, time: :posix) do
              {:ok, %{mtime: m}} -> m > built
              _ -> true
            end
          end)

        _ ->
          true
      end
    end

    defp build(root, target) do
      cargo = cargo()
      dir = target_dir()

      unless File.exists?(cargo) or System.find_executable(cargo) do
        Mix.raise("""
        Causeway needs Rust's cargo to build its native library, and none was found \
        (looked for $CAUSEWAY_CARGO, `cargo` on the PATH and #{cargo}). \
        Install Rust (https://rustup.rs) or run the project's setup: `make setup`.
        """)
      end

      Mix.shell().info("==> causeway: cargo build --release -p causeway_nif (target #{dir})")

      {_, status} =
        System.cmd(cargo, ["build", "--release", "-p", "causeway_nif"],
          cd: root,
          env: [{"CARGO_TARGET_DIR", dir}],
          into: IO.stream(:stdio, :line),
          stderr_to_stdout: true
        )

      built = Path.join([dir, "release", "lib" <> @lib <> ".so"])

      cond do
        status != 0 ->
          {:error, [diagnostic("cargo build failed with exit status #{status}")]}

        not File.exists?(built) ->
          {:error, [diagnostic("cargo succeeded but #{built} is missing")]}

        true ->
          # Never overwrite a library a running VM may have mapped: copy, then rename.
          tmp = target <> ".tmp#{System.unique_integer([:positive])}"
          File.cp!(built, tmp)
          File.rename!(tmp, target)
          {:ok, []}
      end
    end

    defp diagnostic(message) do
      %Mix.Task.Compiler.Diagnostic{
        compiler_name: "causeway_native",
        file: "native/causeway_nif",
        message: message,
        position: nil,
        severity: :error
      }
    end
  end
end
