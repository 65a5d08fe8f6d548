// Package goid tells the current goroutine's id. Its one use is the events
// bus's Poll, which must return ErrRecursive from a handler instead of
// waiting for itself, and cannot tell a handler's call from another
// goroutine's otherwise; it looks only while a handler runs. Not for hot
// paths, and not for new uses: pass values (the *ipc.Alert a handler gets).
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
