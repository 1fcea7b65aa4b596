defmodule Causeway.Native do
  @moduledoc false
  # The NIF library built from native/causeway_nif. Every function here is
  # replaced by its native implementation when the library loads.

  @on_load :load_nif

  @doc false
  def load_nif do
    path = library_path()

    case :erlang.load_nif(String.to_charlist(path), 0) do
      :ok ->
        :persistent_term.erase({__MODULE__, :load_error})
        :ok

      {:error, {reason, text}} ->
        message =
          "Causeway could not load its native library #{path}.so " <>
            "(#{reason}: #{text}). Build it with `mix compile` (needs cargo)."

        :persistent_term.put({__MODULE__, :load_error}, message)
        # Loading the module still succeeds so that calls can say what went wrong.
        :ok
    end
  end

  @doc false
  def library_path do
    priv =
      case :code.priv_dir(:causeway) do
        {:error, _} -> Path.expand("../../priv", __DIR__)
        dir -> List.to_string(dir)
      end

    Path.join([priv, "native", "causeway_nif"])
  end

  @doc false
  def load_error, do: :persistent_term.get({__MODULE__, :load_error}, nil)

  defp err do
    :erlang.nif_error(
      {:nif_not_loaded, load_error() || "Causeway's native library is not loaded"}
    )
  end

  # runtime
  def rt_set_default(_h_or_nil), do: err()
  def rt_function_entry(_m, _f, _a), do: err()
  def rt_function_exit(_call_id, _result), do: err()
  def rt_message_send(_to, _msg), do: err()
  def rt_message_receive(_from, _msg), do: err()
  def rt_message_handled, do: err()
  def rt_state_change(_old, _new), do: err()
  def rt_process_spawn(_child), do: err()
  def rt_process_exit(_pid, _reason), do: err()
  def rt_error(_kind, _reason, _stacktrace), do: err()
  def rt_set_capture(_h, _scope, _on), do: err()
  def rt_watch(_kind, _a, _b, _max_bytes), do: err()
  def bench_noop(_x), do: err()
  def native_info, do: err()

  # tracer (erl_tracer callbacks and sessions)
  def enabled(_tag, _state, _tracee), do: err()
  def trace(_tag, _state, _tracee, _term, _opts), do: err()
  def tracer_session_new(_h, _opts, _owner), do: err()
  def tracer_session_stop(_s, _reason), do: err()
  def tracer_session_info(_s), do: err()
  def tracer_session_fire(_s, _pid), do: err()

  # pipeline
  def pipeline_start(_opts, _owner), do: err()
  def pipeline_close(_h), do: err()
  def pipeline_flush(_h, _token), do: err()
  def pipeline_configure(_h, _update), do: err()
  def pipeline_inject(_h, _kind, _n), do: err()
  def pipeline_level(_h), do: err()
  def pipeline_retention(_h, _to, _token), do: err()
  def pipeline_metrics(_h), do: err()
  def pipeline_snapshot(_h, _telemetry, _reason), do: err()
  def store_incidents(_h), do: err()

  # queries
  def query_events(_h, _filter), do: err()
  def query_event(_h, _id), do: err()
  def query_call_tree(_h, _root, _max), do: err()
  def query_causal_chain(_h, _id, _max), do: err()
  def query_message_flow(_h, _a, _b, _limit), do: err()
  def query_state_history(_h, _pid, _since, _until, _limit), do: err()
  def query_state_at(_h, _pid, _wall_ns), do: err()
  def query_links(_h, _id), do: err()
  def store_open(_dir, _read_only, _atom_limit), do: err()
  def store_close(_h), do: err()
  def store_refresh(_h), do: err()
  def query_count(_h, _filter), do: err()
  def store_flush(_h), do: err()
  def store_compact(_h), do: err()
  def store_stats(_h), do: err()
end
