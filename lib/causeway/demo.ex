defmodule Causeway.Demo do
  @moduledoc """
  The sample workload `mix causeway.demo` records: an instrumented key-value
  GenServer, instrumented workers that call it and each other's results, and
  messages between them. Also a readable example of `use Causeway.Instrument`.
  """

  defmodule Store do
    @moduledoc "An instrumented GenServer: its state changes are recorded with the message that caused them."
    use GenServer
    use Causeway.Instrument

    def start_link(_), do: GenServer.start_link(__MODULE__, %{})

    def put(pid, key, value) do
      # GenServer.call's own send is not instrumented: reporting it lets a
      # state change's causal chain reach back into the calling process
      Causeway.Runtime.message_send(pid, {:put, key, value})
      GenServer.call(pid, {:put, key, value})
    end

    def get(pid, key), do: GenServer.call(pid, {:get, key})

    @impl true
    def init(state), do: {:ok, state}

    @impl true
    def handle_call({:put, key, value}, _from, state),
      do: {:reply, :ok, Map.put(state, key, value)}

    def handle_call({:get, key}, _from, state), do: {:reply, Map.get(state, key), state}
  end

  defmodule Ledger do
    @moduledoc "A plain module (no instrumentation): `mix causeway.demo` records it with `Causeway.trace/2`."
    def record(worker, amount), do: {:recorded, worker, amount}
  end

  defmodule Math do
    @moduledoc "Instrumented pure functions with nested calls."
    use Causeway.Instrument

    def score(n) when is_integer(n) and n >= 0, do: square(n) + fib(rem(n, 8))

    def square(n), do: n * n

    def fib(0), do: 0
    def fib(1), do: 1
    def fib(n), do: fib(n - 1) + fib(n - 2)

    def safe_div(a, b) do
      a / b
    rescue
      ArithmeticError -> :infinity
    end
  end

  @doc """
  Runs `workers` processes that each do `rounds` rounds of: an instrumented
  computation, a put into the shared store, a message to the coordinator.
  Returns `%{store: pid, workers: [pid], coordinator: pid}` once all are done.
  """
  @spec run(pos_integer(), pos_integer()) :: map()
  def run(workers \\ 4, rounds \\ 25) do
    {:ok, store} = Store.start_link([])
    me = self()

    pids =
      for w <- 1..workers do
        pid =
          spawn_link(fn ->
            receive do
              :go -> :ok
            end

            for r <- 1..rounds do
              score = Math.score(w * 100 + r)
              :ok = Store.put(store, {w, r}, score)
              {:recorded, _, _} = Ledger.record(w, score)
              _ = Math.safe_div(score, rem(r, 5))
              msg = {:done, w, r, score}
              Causeway.Runtime.message_send(me, msg)
              send(me, msg)
            end

            Causeway.Runtime.process_exit(self(), :normal)
          end)

        Causeway.Runtime.process_spawn(pid)
        pid
      end

    Enum.each(pids, &send(&1, :go))

    for _ <- 1..(workers * rounds) do
      receive do
        {:done, _, _, _} = msg -> Causeway.Runtime.message_receive(msg)
      after
        30_000 -> raise "demo workload timed out"
      end
    end

    %{store: store, workers: pids, coordinator: me}
  end
end
