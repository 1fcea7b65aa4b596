defmodule Causeway.Instrument.Def do
  @moduledoc false
  # The `def/2` that `use Causeway.Instrument` imports in place of
  # `Kernel.def/2`, and the macro each rewritten body is expanded through
  # (inside its function, where the module's attributes, the function's name
  # and its variables are those of that clause). See
  # `Causeway.Instrument.Rewrite` for what they produce.

  import Kernel, except: [def: 2]

  @doc false
  # Where `use Causeway.Instrument` was not written (a `def` quoted in an
  # instrumented module, expanded in another), it is Kernel.def/2.
  defmacro def(call, expr) do
    if __MODULE__ in __CALLER__.requires,
      do: Causeway.Instrument.Rewrite.define(call, expr),
      else: quote(do: Kernel.def(unquote(call), unquote(expr)))
  end

  @doc false
  defmacro __body__(name, vars, body),
    do: Causeway.Instrument.Rewrite.body(name, vars, body, __CALLER__)
end
