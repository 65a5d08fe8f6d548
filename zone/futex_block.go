//go:build !ipcbus_plainfutex

package zone

import (
	"syscall"
	"unsafe"
	_ "unsafe" // for go:linkname

	"golang.org/x/sys/unix"
)

// futexSleep is the wait itself, as a blocking system call: the runtime
// hands this thread's P to others as it enters (entersyscallblock), where a
// plain system call keeps it until sysmon takes it back. A sleeper holding
// a P keeps the Go process from ever being idle: sysmon then never sleeps
// deeply, and wakes every 20 µs to 10 ms for as long as the reader sleeps
// (measured: half of an idle-ish process's CPU at 200 events/s). Between
// entersyscallblock and exitsyscall nothing may grow the stack, hence
// nosplit, norace and the raw system call; nor can the stack move, so ts
// may point into it.
//
// entersyscallblock and exitsyscall are runtime internals that the
// runtime keeps reachable by go:linkname for outside users (go.dev/issue/67401),
// with their signatures, not their behaviour, promised: a Go release that
// changes how they work is to be checked against TestSleeperLetsProcessIdle
// and the zone's wake-up tests. Building with the tag ipcbus_plainfutex
// makes the wait a plain system call instead (futex_plain.go).
//
//go:nosplit
//go:norace
func futexSleep(addr unsafe.Pointer, val uintptr, ts unsafe.Pointer, mask uintptr) {
	entersyscallblock()
	_, _, _ = syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(addr), futexWaitBitsetOp, val, uintptr(ts), 0, mask)
	exitsyscall()
}

//go:linkname entersyscallblock runtime.entersyscallblock
func entersyscallblock()

//go:linkname exitsyscall runtime.exitsyscall
func exitsyscall()
