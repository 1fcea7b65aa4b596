//! Errors across the boundary: core errors become `{:error, {kind, message}}`;
//! wrongly typed arguments raise `ArgumentError` with a message saying what was
//! wrong.

use crate::atoms;
use rustler::{Atom, Encoder, Env, Term};

/// A core error as `{kind_atom, message}` (the `{:error, _}` is added by rustler).
pub struct CoreError(pub causeway_core::Error);

impl Encoder for CoreError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let kind = Atom::from_str(env, self.0.kind())
            .map(|a| a.encode(env))
            .unwrap_or_else(|_| atoms::error().encode(env));
        (kind, self.0.to_string()).encode(env)
    }
}

/// `core_result.nif()?` turns a core error into `{:error, {kind, message}}`.
pub trait Nif<T> {
    fn nif(self) -> rustler::NifResult<T>;
}

impl<T> Nif<T> for causeway_core::Result<T> {
    fn nif(self) -> rustler::NifResult<T> {
        self.map_err(core_error)
    }
}

pub fn core_error(e: causeway_core::Error) -> rustler::Error {
    rustler::Error::Term(Box::new(CoreError(e)))
}

/// An `ArgumentError` exception with `message`.
pub struct ArgError(pub String);

impl Encoder for ArgError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let keys = [
            atoms::__struct__().encode(env),
            atoms::__exception__().encode(env),
            atoms::message().encode(env),
        ];
        let struct_name = Atom::from_str(env, "Elixir.ArgumentError")
            .map(|a| a.encode(env))
            .unwrap_or_else(|_| atoms::error().encode(env));
        let values = [struct_name, true.encode(env), self.0.encode(env)];
        Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| self.0.encode(env))
    }
}

pub fn arg_error(msg: impl Into<String>) -> rustler::Error {
    rustler::Error::RaiseTerm(Box::new(ArgError(msg.into())))
}
