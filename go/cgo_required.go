//go:build !cgo

package etcdregistry

// The package is a cgo wrapper over the C library: built without cgo (CGO_ENABLED=0, or no C
// compiler found), its cgo files drop out and nothing else can compile. This stands in for the
// first name they define with one left undefined on purpose, so that the build's first error
// says what to do instead of "undefined: cRegistry".
type cRegistry = etcdregistry_requires_cgo_set_CGO_ENABLED_1_and_a_C_compiler
