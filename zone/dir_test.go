package zone

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// nobody is the uid and gid squats are given to (tests that use them run
// as root).
const nobody = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("giving files to another user needs root")
	}
}

func TestDirFor(t *testing.T) {
	for _, tt := range []struct {
		mode os.FileMode
		want string
	}{
		{0, fmt.Sprintf("/d/ipcbus-%d", os.Geteuid())},
		{0o600, fmt.Sprintf("/d/ipcbus-%d", os.Geteuid())},
		{0o660, fmt.Sprintf("/d/ipcbus-g%d", os.Getegid())},
		{0o640, fmt.Sprintf("/d/ipcbus-g%d", os.Getegid())},
	} {
		o := Options{Name: "z", Dir: "/d", Mode: tt.mode}
		if got := DirFor(o); got != tt.want {
			t.Errorf("DirFor(mode %04o) = %s, want %s", tt.mode, got, tt.want)
		}
		if got := PathFor(o); got != tt.want+"/z.zone" {
			t.Errorf("PathFor(mode %04o) = %s", tt.mode, got)
		}
	}
}

// TestPrivateDirCreated: the private directory is made with exactly its
// mode, whatever the umask, and so are the zone file and its blobs.
func TestPrivateDirCreated(t *testing.T) {
	for _, tt := range []struct {
		mode    os.FileMode
		dirMode os.FileMode
	}{
		{0o600, 0o700},
		{0o660, 0o770},
		{0o640, 0o750},
	} {
		t.Run(fmt.Sprintf("%04o", tt.mode), func(t *testing.T) {
			old := syscall.Umask(0o077)
			defer syscall.Umask(old)
			o := testOptions(t, MinSize)
			o.Mode = tt.mode
			z := mustOpen(t, o)
			for _, c := range []struct {
				path string
				want os.FileMode
			}{
				{DirFor(o), tt.dirMode},
				{z.Path(), tt.mode},
				{filepath.Join(DirFor(o), "t"+usageSuffix), tt.mode},
			} {
				fi, err := os.Lstat(c.path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != c.want {
					t.Errorf("%s: mode %04o, want %04o", c.path, fi.Mode().Perm(), c.want)
				}
			}
			name, err := z.PutBlob(make([]byte, 100))
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(z.blobPath(name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tt.mode {
				t.Errorf("blob mode %04o under umask 077, want the zone's %04o", fi.Mode().Perm(), tt.mode)
			}
		})
	}
}

// TestSquattedDir: a private directory that is not this user's (or, for a
// group mode, this group's), not a directory, or more open than its mode
// is refused, with an error naming its owner and the fix.
func TestSquattedDir(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name  string
		mode  os.FileMode
		setup func(t *testing.T, path string)
		want  []string
	}{
		{"open to others", 0o600, func(t *testing.T, p string) { mkdir(t, p, 0o777) },
			[]string{"has mode 0777, but zones of mode 0600 need 0700", "chmod 0700 $PATH"}},
		{"open to the group", 0o600, func(t *testing.T, p string) { mkdir(t, p, 0o770) },
			[]string{"has mode 0770, but zones of mode 0600 need 0700"}},
		{"group mode, closed to the group", 0o660, func(t *testing.T, p string) { mkdir(t, p, 0o700) },
			[]string{"has mode 0700, but zones of mode 0660 need 0770"}},
		{"a symbolic link", 0o600, func(t *testing.T, p string) {
			target := t.TempDir()
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
		}, []string{"is a symbolic link", "not a directory"}},
		{"a file of this user", 0o600, func(t *testing.T, p string) {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, []string{"is not a directory", "owned by uid 0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t, MinSize)
			o.Mode = tt.mode
			p := DirFor(o)
			tt.setup(t, p)
			_, err := Open(o)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			for _, w := range append(tt.want, "zone directory "+p) {
				if w = strings.ReplaceAll(w, "$PATH", p); !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestSquattedDirSkipped: a private directory name that another user (or
// group) took first does not keep the zone from starting: the next name is
// used, by every process alike, and SquattedDirs names the squatted one
// for a warning. Once the fallback is this user's, it is kept even if the
// squatter gives the first name back.
func TestSquattedDirSkipped(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name  string
		mode  os.FileMode
		setup func(t *testing.T, path string)
	}{
		{"a directory of another user", 0o600, func(t *testing.T, p string) {
			mkdir(t, p, 0o700)
			chown(t, p, nobody, nobody)
		}},
		{"a file of another user", 0o600, func(t *testing.T, p string) {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			chown(t, p, nobody, nobody)
		}},
		{"group mode, a directory of another group", 0o660, func(t *testing.T, p string) {
			mkdir(t, p, 0o770)
			chown(t, p, nobody, nobody)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t, MinSize)
			o.Mode = tt.mode
			base := DirFor(o)
			tt.setup(t, base)
			z, err := Open(o)
			if err != nil {
				t.Fatal(err)
			}
			defer z.Close()
			if z.Dir() != o.Dir || filepath.Dir(z.Path()) != base+".1" {
				t.Fatalf("zone at %s, want it in %s.1", z.Path(), base)
			}
			if sq := SquattedDirs(o); len(sq) != 1 || sq[0] != base {
				t.Fatalf("squatted %v, want %s", sq, base)
			}
			// Another process finds the same zone.
			z2, err := Open(o)
			if err != nil {
				t.Fatal(err)
			}
			z2.Close()
			if err := os.RemoveAll(base); err != nil { // the squatter leaves
				t.Fatal(err)
			}
			if got := DirFor(o); got != base+".1" {
				t.Fatalf("after the squatter left, DirFor is %s, want the one in use, %s.1", got, base)
			}
		})
	}
}

// TestGroupDirOfAnotherMember: with a group mode, the directory and the
// zone file may belong to another member of the group.
func TestGroupDirOfAnotherMember(t *testing.T) {
	needRoot(t)
	o := testOptions(t, MinSize)
	o.Mode = 0o660
	z := mustOpen(t, o)
	z.Close()
	gid := os.Getegid()
	chown(t, DirFor(o), nobody, gid)
	chown(t, z.Path(), nobody, gid)
	chown(t, filepath.Join(DirFor(o), "t"+usageSuffix), nobody, gid)
	z2 := mustOpen(t, o)
	if _, err := z2.PutBlob(make([]byte, 10)); err != nil {
		t.Fatalf("blob in a group directory of another member: %v", err)
	}
}

// TestSquattedFile: a zone file in the private directory that is not this
// user's, or open to others, is refused (only root or this user can put it
// there, but the check does not rely on it); a file squatted at the old,
// predictable place in the shared directory no longer matters.
func TestSquattedFile(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name  string
		mode  os.FileMode
		setup func(t *testing.T, path string)
		want  string // "" for success
	}{
		{"owned by another user", 0o600, func(t *testing.T, p string) { squat(t, p, 0o600, nobody, nobody) },
			"is owned by uid 65534"},
		{"group mode, owned by a user of another group", 0o660, func(t *testing.T, p string) { squat(t, p, 0o660, nobody, nobody) },
			"is owned by uid 65534"},
		{"group mode, open to others", 0o660, func(t *testing.T, p string) { squat(t, p, 0o666, nobody, os.Getegid()) },
			"has mode 0666, which lets every user in"},
		{"own file open to others", 0o600, func(t *testing.T, p string) { squat(t, p, 0o606, 0, 0) },
			"has mode 0606, which lets every user in"},
		{"group mode, a member's file", 0o660, func(t *testing.T, p string) { squat(t, p, 0o660, nobody, os.Getegid()) },
			""},
		{"the old predictable name in the shared directory", 0o600, func(t *testing.T, p string) {
			old := filepath.Join(filepath.Dir(filepath.Dir(p)), "ipcbus-t.zone")
			if err := os.WriteFile(old, nil, 0o666); err != nil {
				t.Fatal(err)
			}
			chown(t, old, nobody, nobody)
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t, MinSize)
			o.Mode = tt.mode
			mkdir(t, DirFor(o), dirMode(tt.mode))
			tt.setup(t, PathFor(o))
			z, err := Open(o)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				z.Close()
				return
			}
			if err == nil {
				z.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), PathFor(o)) {
				t.Fatalf("error %q does not say %q and the path", err, tt.want)
			}
		})
	}
}

func TestWorldWritableParent(t *testing.T) {
	parent := t.TempDir()
	if err := os.Chmod(parent, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Options{Name: "t", Dir: parent, Size: MinSize})
	if err == nil || !strings.Contains(err.Error(), "can be written by every user and has no sticky bit") {
		t.Fatalf("Open in a world-writable directory without the sticky bit: %v", err)
	}
	if err := os.Chmod(parent, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	z, err := Open(Options{Name: "t", Dir: parent, Size: MinSize})
	if err != nil {
		t.Fatalf("Open in a sticky directory such as /dev/shm: %v", err)
	}
	z.Close()
}

// squat writes a blank zone file at p with the given mode and owner.
func squat(t *testing.T, p string, mode os.FileMode, uid, gid int) {
	t.Helper()
	if err := os.WriteFile(p, nil, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	chown(t, p, uid, gid)
}

func mkdir(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, p string, uid, gid int) {
	t.Helper()
	if err := os.Lchown(p, uid, gid); err != nil {
		t.Fatal(err)
	}
}
