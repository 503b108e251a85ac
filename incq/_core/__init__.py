"""The array core: public functions, validators, dispatch, the golden implementation, the torch
backend and the format table. Stateless functions on plain arrays; no file I/O."""
