//go:build ipcbus_plainfutex

package zone

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// futexSleep is the wait as a plain system call, for builds with the tag
// ipcbus_plainfutex: the way out should a Go release break the runtime
// internals futex_block.go relies on. The thread keeps its P while it
// sleeps, until sysmon takes it back, so a process with a sleeping reader
// keeps sysmon waking (docs/zone.md, "A sleeping reader leaves its process
// idle").
func futexSleep(addr unsafe.Pointer, val uintptr, ts unsafe.Pointer, mask uintptr) {
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(addr), futexWaitBitsetOp, val, uintptr(ts), 0, mask)
}
