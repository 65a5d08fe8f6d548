package zone

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// errUnlinked is what attach finds when the file it waited for was removed
// meanwhile (by Remove, or by a failed create): Open then opens the path
// again rather than join a file nobody else will ever find.
var errUnlinked = errors.New("zone file removed while attaching")

// ErrInUse is returned by Remove for a zone that live processes use.
var ErrInUse = errors.New("zone in use")

// Remove deletes the zone named by o (its file, its blob files and its
// blob usage file; the private directory too when nothing else is left in
// it) once no live process holds a lock in it: no worker, no process
// mapping it for writing. It takes the node lock first, so that no process
// attaches meanwhile (one that was waiting for the lock finds the file
// gone and creates a new one). It returns the paths it removed. A zone of
// another layout version or a damaged one is removed the same way.
func Remove(o Options) ([]string, error) {
	if err := ValidateName(o.Name); err != nil {
		return nil, err
	}
	if o.Dir == "" {
		o.Dir = DefaultDir()
	}
	path := PathFor(o)
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("removing zone %q: %w", o.Name, err)
	}
	defer f.Close()
	if err := lockRange(f, unix.F_WRLCK, nodeLockByte, true); err != nil {
		return nil, fmt.Errorf("locking zone file %s: %w", path, err)
	}
	defer lockRange(f, unix.F_UNLCK, nodeLockByte, false)
	// Workers and members hold their liveness locks on bytes of the file
	// for as long as they live: any lock of another description on any
	// byte is a live process.
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return nil, fmt.Errorf("zone file %s: %w", path, err)
	}
	if lk.Type != unix.F_UNLCK {
		return nil, fmt.Errorf("zone file %s: %w: a live process holds a lock at byte %d; stop every Caddy process of the node (caddy ipcbus workers lists them) and try again", path, ErrInUse, lk.Start)
	}
	dir := filepath.Dir(path)
	probe := &Zone{name: o.Name}
	var removed []string
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if probe.isBlobName(e.Name()) || e.Name() == o.Name+usageSuffix {
				p := filepath.Join(dir, e.Name())
				if os.Remove(p) == nil {
					removed = append(removed, p)
				}
			}
		}
	}
	if err := os.Remove(path); err != nil {
		return removed, fmt.Errorf("removing zone file %s: %w", path, err)
	}
	removed = append(removed, path)
	if os.Remove(dir) == nil { // only when empty
		removed = append(removed, dir)
	}
	return removed, nil
}
