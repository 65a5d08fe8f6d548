package zone

import (
	"fmt"
	"os/user"
	"strconv"
)

// owner names a uid for error messages: "uid 65534 (nobody)", or just the
// number when the system has no name for it.
func owner(uid uint32) string {
	s := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(s); err == nil && u.Username != "" {
		return fmt.Sprintf("uid %s (%s)", s, u.Username)
	}
	return "uid " + s
}

// group names a gid for error messages: "group 1000 (caddy)".
func group(gid uint32) string {
	s := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(s); err == nil && g.Name != "" {
		return fmt.Sprintf("group %s (%s)", s, g.Name)
	}
	return "group " + s
}
