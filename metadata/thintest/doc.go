// Package thintest holds helpers for tests of the metadata engine: it loads
// the kernel-written fixture pools and damages copies of them, one block at
// a time, resealing checksums so that the damage reaches the checker's
// deeper rules. It is used only by tests.
package thintest
