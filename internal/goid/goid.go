// Package goid tells the current goroutine's id, for the checks that an
// API is (or is not) called from a delivery goroutine. Not for hot paths.
package goid

import (
	"bytes"
	"runtime"
	"strconv"
)

// Get returns the current goroutine's id.
func Get() uint64 {
	var buf [32]byte
	n := runtime.Stack(buf[:], false)
	f := bytes.Fields(buf[:n])
	if len(f) < 2 {
		return 0
	}
	id, _ := strconv.ParseUint(string(f[1]), 10, 64)
	return id
}
