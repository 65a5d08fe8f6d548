// Package zone is the shared-memory zone of caddy-ipcbus: a named, versioned
// file mapped by every process of a node, holding the node counters, the
// worker table and a multi-writer broadcast ring, plus the kernel locks and
// futex doorbell that go with them. It knows nothing of Caddy.
package zone

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options name and size a zone.
type Options struct {
	// Name of the zone; the file is "<name>.zone" in the zone's private
	// directory in Dir (see DirFor).
	Name string
	// Dir holds the zone's private directory ("ipcbus-<uid>", or
	// "ipcbus-g<gid>" for a group mode), which holds the zone file and its
	// blobs; empty means DefaultDir().
	Dir string
	// Size of the zone in bytes. When attaching, 0 accepts whatever size the
	// file has; any other value must equal it.
	Size int64
	// Mode of a new zone file and of its blobs; 0 means 0600. A mode that
	// grants the group read and write (0660) lets processes of other users
	// that run with the same effective group join (see DirFor). Modes with
	// bits for other users are refused.
	Mode os.FileMode
	// BlobQuota bounds the bytes the zone's blob files may hold at once,
	// across every process of the node; 0 means DefaultBlobQuota. See
	// SetBlobQuota.
	BlobQuota int64
	// UniqueKeys is the number of run-once keys the zone holds at once,
	// MinUniqueKeys to MaxUniqueKeys and at most a quarter of the zone;
	// 0 means DefaultUniqueKeys when creating, and whatever the file has
	// when attaching (any other value must equal it).
	UniqueKeys int
	// ReadOnly attaches without creating and maps the zone read-only
	// (for inspection tools).
	ReadOnly bool
}

// DefaultName and DefaultSize are used when a config names neither.
const (
	DefaultName = "default"
	DefaultSize = 64 << 20
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidateName reports whether name can name a zone.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid zone name %q: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// ValidateSize reports whether size is a usable zone size.
func ValidateSize(size int64) error {
	if size < MinSize || size > MaxSize {
		return fmt.Errorf("invalid zone size %d bytes: must be between %d (1MiB) and %d (64GiB)", size, int64(MinSize), int64(MaxSize))
	}
	return nil
}

// ValidateUniqueKeys reports whether a zone of size bytes can hold keys
// run-once keys (size 0: any size).
func ValidateUniqueKeys(keys int, size int64) error {
	if keys < MinUniqueKeys || keys > MaxUniqueKeys {
		return fmt.Errorf("invalid unique_keys %d: must be between %d and %d", keys, MinUniqueKeys, MaxUniqueKeys)
	}
	if size != 0 && int64(keys)*uniqueSlotSize > size/4 {
		return fmt.Errorf("invalid unique_keys %d: their table (%d bytes) would take more than a quarter of the %d-byte zone; give at most %d, or a larger size", keys, keys*uniqueSlotSize, size, size/4/uniqueSlotSize)
	}
	return nil
}

// DefaultDir is /dev/shm when it is a writable directory, else
// $XDG_RUNTIME_DIR when set and writable, else the OS temp dir.
func DefaultDir() string {
	for _, d := range []string{"/dev/shm", os.Getenv("XDG_RUNTIME_DIR")} {
		if d != "" && unix.Access(d, unix.W_OK|unix.X_OK) == nil {
			if st, err := os.Stat(d); err == nil && st.IsDir() {
				return d
			}
		}
	}
	return os.TempDir()
}

// PathFor is the file path of the zone named by o: "<name>.zone" in the
// zone's private directory, DirFor(o).
func PathFor(o Options) string { return filepath.Join(DirFor(o), o.Name+".zone") }

// Zone is one process's mapping of a zone file. It is safe for concurrent use.
// The file descriptor behind it never holds a liveness lock, so it is the one
// used to probe other workers' liveness.
type Zone struct {
	name string
	dir  string      // Options.Dir, resolved: the parent of the private directory
	mode os.FileMode // the zone file's mode, given to blobs
	ro   bool
	path string
	f    *os.File
	mem  []byte
	hdr  *header
	geo  geometry
	ring *Ring
	// mf holds the member lock of slot self; nil when read-only.
	mf   *os.File
	self int
	blob blobState
}

// Open creates the zone file or attaches to an existing one, after checking
// that it is a zone of this layout version and of the requested size.
func Open(o Options) (*Zone, error) {
	if err := ValidateName(o.Name); err != nil {
		return nil, err
	}
	if o.Size != 0 {
		if err := ValidateSize(o.Size); err != nil {
			return nil, err
		}
	}
	mode := modeOf(o)
	if err := validateMode(mode); err != nil {
		return nil, err
	}
	if o.Dir == "" {
		o.Dir = DefaultDir()
	}
	path := PathFor(o)
	if !o.ReadOnly {
		if err := ensureDir(o.Dir, filepath.Dir(path), mode); err != nil {
			return nil, err
		}
	}
	for attempt := 0; ; attempt++ {
		z, err := open(o, path, mode)
		if errors.Is(err, errUnlinked) && attempt < 3 {
			continue
		}
		return z, err
	}
}

// open is one try of Open.
func open(o Options, path string, mode os.FileMode) (*Zone, error) {
	flags := os.O_RDWR | os.O_CREATE
	if o.ReadOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, mode)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			var st unix.Stat_t
			if unix.Lstat(path, &st) == nil {
				return nil, fmt.Errorf("zone file %s: permission denied: it is owned by %s (group %s, mode %04o); run every process of the node as one user, or give every process a group mode such as 0660 and one common group", path, owner(st.Uid), group(st.Gid), st.Mode&0o777)
			}
			return nil, fmt.Errorf("zone file %s: permission denied; run every process of the node as one user, or give every process a group mode such as 0660 and one common group", path)
		}
		if o.ReadOnly && errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("zone file %s does not exist: no Caddy process of this user (or group, with a group mode) has started the zone %q in %s", path, o.Name, o.Dir)
		}
		return nil, fmt.Errorf("opening zone file %s: %w", path, unwrapPath(err))
	}
	z := &Zone{name: o.Name, dir: o.Dir, ro: o.ReadOnly, path: path, f: f, self: -1}
	if err := z.attach(o, mode); err != nil {
		z.Close()
		return nil, err
	}
	z.ring = newRing(z)
	if !o.ReadOnly {
		if err := z.openBlobs(o.BlobQuota); err != nil {
			z.Close()
			return nil, err
		}
		if err := z.join(); err != nil {
			z.Close()
			return nil, err
		}
		z.ring.self = z.self
	}
	return z, nil
}

func (z *Zone) attach(o Options, mode os.FileMode) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(z.f.Fd()), &st); err != nil {
		return fmt.Errorf("zone file %s: %w", z.path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("zone file %s is not a regular file; remove it or choose another zone name", z.path)
	}
	if !o.ReadOnly {
		if err := checkOwner("zone file", z.path, &st, mode); err != nil {
			return err
		}
		uid := uint32(os.Geteuid())
		// Creation and validation happen under the node lock, so that two
		// processes starting together agree on who initializes the file.
		if err := lockRange(z.f, unix.F_WRLCK, nodeLockByte, true); err != nil {
			return fmt.Errorf("locking zone file %s: %w", z.path, err)
		}
		defer lockRange(z.f, unix.F_UNLCK, nodeLockByte, false)
		if err := unix.Fstat(int(z.f.Fd()), &st); err != nil {
			return fmt.Errorf("zone file %s: %w", z.path, err)
		}
		if st.Nlink == 0 {
			return errUnlinked // removed while this process waited for the lock
		}
		z.mode = os.FileMode(st.Mode & 0o777)
		if st.Size == 0 || z.isBlank(st.Size) {
			if st.Uid == uid {
				z.mode = mode
			}
			if err := z.create(uint64(o.Size), uint64(o.UniqueKeys), mode, st.Uid == uid); err != nil {
				// A failed create leaves no file: removed under the node
				// lock, so an opener waiting for it finds the file unlinked
				// and opens the path again.
				os.Remove(z.path)
				return err
			}
			return nil
		}
	}
	return z.validate(o, st.Size)
}

// isBlank reports whether the file is all zeros where the magic goes: a file
// created but never initialized (its creator died before writing the magic).
func (z *Zone) isBlank(size int64) bool {
	if size < 8 {
		return true
	}
	var b [8]byte
	n, err := z.f.ReadAt(b[:], 0)
	return err == nil && n == 8 && b == [8]byte{}
}

func (z *Zone) create(size, keys uint64, mode os.FileMode, owned bool) error {
	if size == 0 {
		size = DefaultSize
	}
	if keys == 0 {
		keys = DefaultUniqueKeys
	}
	if err := ValidateUniqueKeys(int(keys), int64(size)); err != nil {
		return fmt.Errorf("zone file %s: %w", z.path, err)
	}
	if owned {
		// The umask may have narrowed the mode; set the one asked for.
		if err := z.f.Chmod(mode); err != nil {
			return fmt.Errorf("setting mode of zone file %s: %w", z.path, err)
		}
	}
	if err := reserve(z.f, z.path, int64(size)); err != nil {
		return err
	}
	if err := z.mmap(int(size), true); err != nil {
		return err
	}
	g := layoutFor(size, keys)
	h := z.hdr
	h.Version = LayoutVersion
	h.HeaderSize = headerSize
	h.Size = g.size
	h.CreatedAt = time.Now().UnixNano()
	h.WorkerOff = g.workerOff
	h.WorkerSlots = uint32(g.workerSlots)
	h.WorkerSlotSize = workerSlotSize
	h.IndexOff = g.indexOff
	h.IndexSlots = g.indexSlots
	h.DataOff = g.dataOff
	h.DataSize = g.dataSize
	h.MaxRecord = g.maxRecord
	h.UniqueOff = g.uniqueOff
	h.UniqueSlots = uint32(keys)
	h.UniqueSlotSize = uniqueSlotSize
	h.MemberOff = g.memberOff
	h.MemberSlots = MaxMembers
	h.MemberSlotSize = memberSlotSize
	h.SegOff = g.segOff
	h.Segments = uint32(g.segments)
	h.SegSize = uint32(g.segSize)
	// The magic goes last: a file without it is unfinished and is redone.
	copy(z.mem[:8], magic[:])
	z.geo = g
	return nil
}

// reserve gives the file its size with every page allocated, so that a full
// tmpfs is an error now and not a SIGBUS on first touch later.
func reserve(f *os.File, path string, size int64) error {
	err := unix.Fallocate(int(f.Fd()), 0, 0, size)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ENOSPC) {
		var fs unix.Statfs_t
		free := "unknown"
		if unix.Fstatfs(int(f.Fd()), &fs) == nil {
			free = fmt.Sprintf("%d bytes", fs.Bavail*uint64(fs.Bsize))
		}
		_ = f.Truncate(0)
		return fmt.Errorf("zone file %s: no space for %d bytes in %s (free: %s); make the zone smaller or give the file system more room (Docker: --shm-size)", path, size, filepath.Dir(path), free)
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		// No fallocate on this file system: set the size and touch nothing.
		if terr := f.Truncate(size); terr != nil {
			return fmt.Errorf("sizing zone file %s: %w", path, terr)
		}
		return nil
	}
	return fmt.Errorf("reserving %d bytes for zone file %s: %w", size, path, err)
}

func (z *Zone) mmap(size int, writable bool) error {
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	mem, err := unix.Mmap(int(z.f.Fd()), 0, size, prot, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mapping zone file %s (%d bytes): %w", z.path, size, err)
	}
	z.mem = mem
	z.hdr = (*header)(unsafe.Pointer(&mem[0]))
	return nil
}

func (z *Zone) validate(o Options, fileSize int64) error {
	remedy := "stop every process using it and remove the file, or choose another zone name"
	if fileSize < headerSize {
		return fmt.Errorf("zone file %s is truncated (%d bytes, smaller than its %d-byte header); %s", z.path, fileSize, headerSize, remedy)
	}
	var b [headerSize]byte
	if _, err := z.f.ReadAt(b[:], 0); err != nil {
		return fmt.Errorf("reading zone file %s: %w", z.path, err)
	}
	if !bytes.Equal(b[:8], magic[:]) {
		return fmt.Errorf("zone file %s is not an ipcbus zone (bad magic); %s", z.path, remedy)
	}
	h := (*header)(unsafe.Pointer(&b[0]))
	if h.Version != LayoutVersion {
		return fmt.Errorf("zone file %s has layout version %d, this build uses %d; stop every process using the zone (those of the other version too) and remove the file, or use another zone name for this one", z.path, h.Version, LayoutVersion)
	}
	if h.Size != uint64(fileSize) {
		return fmt.Errorf("zone file %s is %d bytes but its header says %d: it is truncated or damaged; %s", z.path, fileSize, h.Size, remedy)
	}
	if o.Size != 0 && h.Size != uint64(o.Size) {
		return fmt.Errorf("zone file %s is %d bytes but the config asks for %d; set size to %d, or stop every process using the zone and remove the file to resize it", z.path, h.Size, o.Size, h.Size)
	}
	if err := ValidateSize(int64(h.Size)); err != nil {
		return fmt.Errorf("zone file %s: %w; %s", z.path, err, remedy)
	}
	if err := ValidateUniqueKeys(int(h.UniqueSlots), int64(h.Size)); err != nil {
		return fmt.Errorf("zone file %s has a damaged header: %w; %s", z.path, err, remedy)
	}
	if o.UniqueKeys != 0 && uint64(h.UniqueSlots) != uint64(o.UniqueKeys) {
		return fmt.Errorf("zone file %s holds %d run-once keys but the config asks for %d; set unique_keys to %d, or stop every process using the zone and remove it (caddy ipcbus rm) to change it", z.path, h.UniqueSlots, o.UniqueKeys, h.UniqueSlots)
	}
	g := layoutFor(h.Size, uint64(h.UniqueSlots))
	if h.HeaderSize != headerSize || h.WorkerOff != g.workerOff || uint64(h.WorkerSlots) != g.workerSlots ||
		h.WorkerSlotSize != workerSlotSize || h.IndexOff != g.indexOff || h.IndexSlots != g.indexSlots ||
		h.DataOff != g.dataOff || h.DataSize != g.dataSize || h.MaxRecord != g.maxRecord ||
		h.UniqueOff != g.uniqueOff || h.UniqueSlotSize != uniqueSlotSize ||
		h.MemberOff != g.memberOff || h.MemberSlots != MaxMembers || h.MemberSlotSize != memberSlotSize ||
		h.SegOff != g.segOff || uint64(h.Segments) != g.segments || uint64(h.SegSize) != g.segSize {
		return fmt.Errorf("zone file %s has a damaged header (its areas do not match its size); %s", z.path, remedy)
	}
	if err := z.mmap(int(h.Size), !o.ReadOnly); err != nil {
		return err
	}
	z.geo = g
	if err := z.checkBody(); err != nil {
		return fmt.Errorf("zone file %s: %w; %s", z.path, err, remedy)
	}
	return nil
}

// Close unmaps the zone and closes its file. It does not remove the file:
// the node's counters outlive its processes.
func (z *Zone) Close() error {
	var err error
	z.closeBlobs()
	if z.mf != nil {
		if z.ring != nil {
			z.ring.close()
		}
		z.clearMember(z.self)
		z.mf.Close()
		z.mf = nil
	}
	if z.mem != nil {
		err = unix.Munmap(z.mem)
		z.mem, z.hdr, z.ring = nil, nil, nil
	}
	if z.f != nil {
		if cerr := z.f.Close(); err == nil {
			err = cerr
		}
		z.f = nil
	}
	return err
}

// Path is the zone file's path.
func (z *Zone) Path() string { return z.path }

// Name is the zone's name.
func (z *Zone) Name() string { return z.name }

// Dir is the directory the zone was opened in (Options.Dir, or the
// DefaultDir it stood for): what another process gives as Options.Dir to
// attach to this zone. The zone file itself is in a private directory in
// it (see DirFor).
func (z *Zone) Dir() string { return z.dir }

// Size is the zone's size in bytes.
func (z *Zone) Size() int64 { return int64(z.geo.size) }

// CreatedAt is when the zone file was initialized.
func (z *Zone) CreatedAt() time.Time { return time.Unix(0, z.hdr.CreatedAt) }

// Node is the node area: state and counters.
func (z *Zone) Node() *Node { return &z.hdr.node }

// Fleet is the zone's fleet area.
func (z *Zone) Fleet() *FleetArea { return &z.hdr.fleet }

// Ring is the zone's broadcast ring.
func (z *Zone) Ring() *Ring { return z.ring }

// Workers is the number of worker slots.
func (z *Zone) Workers() int { return int(z.geo.workerSlots) }

// Worker is worker slot i, 0 ≤ i < Workers().
func (z *Zone) Worker(i int) *WorkerSlot {
	if i < 0 || uint64(i) >= z.geo.workerSlots {
		panic(fmt.Sprintf("zone: worker slot %d out of range", i))
	}
	off := z.geo.workerOff + uint64(i)*workerSlotSize
	return (*WorkerSlot)(unsafe.Pointer(&z.mem[off]))
}

// WorkerLockOffset is the byte of the zone file a worker in slot i keeps locked while alive.
func (z *Zone) workerLockOffset(i int) int64 {
	return int64(z.geo.workerOff) + int64(i)*workerSlotSize
}
