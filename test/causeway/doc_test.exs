defmodule Causeway.DocTest do
  use ExUnit.Case, async: true
  doctest Causeway.JSON
  doctest Causeway.Error
end
