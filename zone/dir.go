package zone

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Zone files and their blobs never sit directly in a directory every user
// can write, such as /dev/shm: there, any user could create a file under
// the name a zone is about to use, and either block Caddy's start-up or get
// joined to (and read, write, truncate) a node. They live in a directory of
// their own inside Options.Dir:
//
//   - "ipcbus-<uid>", mode 0700, for a zone mode that gives the group
//     nothing (the default 0600), named for this process's effective uid;
//   - "ipcbus-g<gid>", mode 0770 (0750 for a zone mode of 0640), for a group
//     mode such as 0660, named for this process's effective gid, so that
//     processes of several users that run with that group find the same
//     directory; any member of the group may have created it.
//
// The directory is created on first use and checked on every attach: a
// directory (not a symbolic link), owned by this user (group mode: of the
// named group), with exactly the mode above. Anything else is refused with
// an error that names the owner and the fix; nothing is ever attached in a
// directory another user controls. The names are predictable, so another
// user could create one first to keep Caddy from starting: a name taken
// by another user (or group) is skipped for the next of "<name>.1" to
// "<name>.7", every process choosing alike (the first one that is its
// own, else the first free one), and the app logs a warning naming the
// squatter (SquattedDirs).

// DirFor is the directory holding the zone file and the blobs of the zone
// named by o: "ipcbus-<uid>" in o.Dir (DefaultDir when empty), or
// "ipcbus-g<gid>" for a group mode (see the package's directory rules).
func DirFor(o Options) string {
	dir, _ := dirFor(o)
	return dir
}

// dirTries is how many names DirFor tries: the base name and .1 to .7.
const dirTries = 8

// dirFor is DirFor, with the names it skipped because another user (or
// group) holds them.
func dirFor(o Options) (string, []string) {
	parent := o.Dir
	if parent == "" {
		parent = DefaultDir()
	}
	mode := modeOf(o)
	base := filepath.Join(parent, fmt.Sprintf("ipcbus-%d", os.Geteuid()))
	if groupShared(mode) {
		base = filepath.Join(parent, fmt.Sprintf("ipcbus-g%d", os.Getegid()))
	}
	name := func(i int) string {
		if i == 0 {
			return base
		}
		return fmt.Sprintf("%s.%d", base, i)
	}
	var squatted []string
	free := ""
	for i := 0; i < dirTries; i++ {
		p := name(i)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if free == "" && errors.Is(err, fs.ErrNotExist) {
				free = p
			}
			continue
		}
		if !othersDir(&st, mode) {
			return p, squatted // this user's (or group's): checked on attach
		}
		squatted = append(squatted, p)
	}
	if free != "" {
		return free, squatted
	}
	return base, squatted // all taken: attaching says by whom
}

// othersDir reports whether the entry st, at a private directory's name,
// belongs to another user (or, for a group mode, another group).
func othersDir(st *unix.Stat_t, mode os.FileMode) bool {
	if groupShared(mode) {
		return st.Gid != uint32(os.Getegid())
	}
	return st.Uid != uint32(os.Geteuid())
}

// SquattedDirs lists the private directory names for o that another user
// (or group) holds, and that DirFor therefore skips: worth a warning.
func SquattedDirs(o Options) []string {
	_, squatted := dirFor(o)
	return squatted
}

// modeOf is the zone file mode o asks for, 0600 by default.
func modeOf(o Options) os.FileMode {
	if m := o.Mode.Perm(); m != 0 {
		return m
	}
	return 0o600
}

// groupShared reports a zone mode that lets the file's group in.
func groupShared(mode os.FileMode) bool { return mode&0o070 != 0 }

// dirMode is the mode of the private directory for zone files of mode m:
// everything for the owner; for the group, search plus what m gives it.
func dirMode(m os.FileMode) os.FileMode {
	d := os.FileMode(0o700)
	if m&0o040 != 0 {
		d |= 0o050
	}
	if m&0o020 != 0 {
		d |= 0o030
	}
	return d
}

// validateMode refuses zone modes that let other users in or lock the
// owner out.
func validateMode(m os.FileMode) error {
	if m&0o600 != 0o600 || m&0o111 != 0 || m&0o007 != 0 {
		return fmt.Errorf("invalid zone mode %04o: give an octal file mode such as 0600 or 0660: readable and writable by its owner, no execute bits, nothing for other users", m)
	}
	return nil
}

// ensureDir creates the zone's private directory path in parent if it is
// missing and checks it: see the package's directory rules.
func ensureDir(parent, path string, mode os.FileMode) error {
	if err := checkParent(parent); err != nil {
		return err
	}
	want := dirMode(mode)
	err := os.Mkdir(path, want)
	switch {
	case err == nil:
		// Nobody else can replace it (checkParent): set the mode the umask narrowed.
		if err := os.Chmod(path, want); err != nil {
			return fmt.Errorf("setting the mode of zone directory %s: %w", path, err)
		}
	case errors.Is(err, fs.ErrExist):
	default:
		return fmt.Errorf("creating zone directory %s: %w", path, unwrapPath(err))
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("zone directory %s: %w", path, err)
	}
	return checkDir(path, &st, mode)
}

// checkParent refuses a parent directory that every user can write without
// the sticky bit: another user could rename the private directory away and
// put their own in its place.
func checkParent(parent string) error {
	fi, err := os.Stat(parent)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("zone directory %s does not exist; create it or set the ipcbus dir option to an existing directory", parent)
		}
		return fmt.Errorf("zone directory %s: %w", parent, unwrapPath(err))
	}
	if !fi.IsDir() {
		return fmt.Errorf("zone directory %s is not a directory; set the ipcbus dir option to a directory", parent)
	}
	if fi.Mode().Perm()&0o002 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("zone directory %s can be written by every user and has no sticky bit, so another user could replace the zone's files in it; run chmod +t %s, or set the ipcbus dir option to a directory only this user (or group) can write", parent, parent)
	}
	return nil
}

// checkDir checks the private directory path, whose Lstat is st, for
// zone files of mode mode.
func checkDir(path string, st *unix.Stat_t, mode os.FileMode) error {
	who := "this user"
	if groupShared(mode) {
		who = "this group"
	}
	fix := fmt.Sprintf("remove it (as %s or root: rm -r %s) and start again, or set the ipcbus dir option to a directory only %s can write, such as $XDG_RUNTIME_DIR", owner(st.Uid), path, who)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
	case unix.S_IFLNK:
		return fmt.Errorf("zone directory %s is a symbolic link (owned by %s), not a directory; %s", path, owner(st.Uid), fix)
	default:
		return fmt.Errorf("zone directory %s is not a directory (it is a file owned by %s); %s", path, owner(st.Uid), fix)
	}
	if groupShared(mode) {
		if gid := uint32(os.Getegid()); st.Gid != gid {
			return fmt.Errorf("zone directory %s belongs to %s and %s, not to %s, this process's group; %s", path, owner(st.Uid), group(st.Gid), group(gid), fix)
		}
	} else if uid := uint32(os.Geteuid()); st.Uid != uid {
		return fmt.Errorf("zone directory %s is owned by %s, not by this process's user (%s): another user created it, which would give them this user's zones; %s", path, owner(st.Uid), owner(uid), fix)
	}
	want, got := dirMode(mode), os.FileMode(st.Mode&0o777)
	if got != want {
		return fmt.Errorf("zone directory %s has mode %04o, but zones of mode %04o need %04o (the owner everything, the group what the zone mode gives it, nobody else anything); run chmod %04o %s as its owner (%s), or remove it", path, got, mode, want, want, path, owner(st.Uid))
	}
	return nil
}

// checkOwner checks a file of the zone (zone file, blob usage file) that
// this process did not necessarily create: owned by this user, or with a
// group mode, by a member of this process's groups (the file's group is
// one of them: only members, and root, can give a file a group) with the
// group's read and write bits; never with bits for other users.
func checkOwner(what, path string, st *unix.Stat_t, mode os.FileMode) error {
	perm := os.FileMode(st.Mode & 0o777)
	if perm&0o007 != 0 {
		return fmt.Errorf("%s %s has mode %04o, which lets every user in; remove it (as %s or root) and start again", what, path, perm, owner(st.Uid))
	}
	uid := uint32(os.Geteuid())
	if st.Uid == uid {
		return nil
	}
	if groupShared(mode) && inGroups(st.Gid) && perm&0o060 == 0o060 {
		return nil
	}
	return fmt.Errorf("%s %s is owned by %s (group %s, mode %04o), not by this process (%s); remove it (as its owner or root), run every process of the node as one user, or give every process a group mode such as 0660 and one common group", what, path, owner(st.Uid), group(st.Gid), perm, owner(uid))
}

// inGroups reports whether gid is this process's effective group or one of
// its supplementary groups.
func inGroups(gid uint32) bool {
	if uint32(os.Getegid()) == gid {
		return true
	}
	gs, _ := unix.Getgroups()
	for _, g := range gs {
		if uint32(g) == gid {
			return true
		}
	}
	return false
}

// unwrapPath drops the path from a *fs.PathError: for messages that name
// the path themselves, or that must not name it.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// PrivateDir creates the private directory of the zone named by o if it
// is missing, checks it (see the package's directory rules) and returns
// its path: for the files that live with a zone but are not the zone's,
// such as a master process's worker sockets and configs.
func PrivateDir(o Options) (string, error) {
	mode := modeOf(o)
	if err := validateMode(mode); err != nil {
		return "", err
	}
	if o.Dir == "" {
		o.Dir = DefaultDir()
	}
	path := DirFor(o)
	if err := ensureDir(o.Dir, path, mode); err != nil {
		return "", err
	}
	return path, nil
}
