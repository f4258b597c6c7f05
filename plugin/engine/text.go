package engine

import (
	"bufio"
	"strings"
)

// TextInfo is what ParseInfoText finds in the output of `docker info`.
type TextInfo struct {
	ServerVersion string
	Driver        string
	RootDir       string
	DriverStatus  [][2]string
}

// ParseInfoText reads the human-readable output of `docker info`, as old
// CLIs print it or as a user pastes it: the "Storage Driver:" line and the
// indented lines under it become the DriverStatus pairs. Inline warnings
// (" WARNING: ...") and lines without a colon are skipped. Both the flat
// layout of 1.x-19.x engines and the Client:/Server: sections of later
// ones are read.
func ParseInfoText(text string) TextInfo {
	var ti TextInfo
	in, indent := false, -1
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.HasPrefix(line, "# ") {
			continue
		}
		trimmed := strings.TrimLeft(line, " \t")
		depth := len(line) - len(trimmed)
		key, val, ok := strings.Cut(trimmed, ":")
		if in {
			if depth > indent && ok && !strings.HasPrefix(trimmed, "WARNING") {
				ti.DriverStatus = append(ti.DriverStatus, [2]string{key, strings.TrimSpace(val)})
				continue
			}
			if depth > indent {
				continue
			}
			in = false
		}
		if !ok {
			continue
		}
		switch key {
		case "Server Version":
			ti.ServerVersion = strings.TrimSpace(val)
		case "Storage Driver":
			ti.Driver = strings.TrimSpace(val)
			in, indent = true, depth
		case "Docker Root Dir":
			ti.RootDir = strings.TrimSpace(val)
		}
	}
	return ti
}
