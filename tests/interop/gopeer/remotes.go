package main

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// remote is one entry of the config request (PROTOCOL.md section 4); the
// JSON names and the string-typed ports are what chisel's client sends.
type remote struct {
	LocalHost   string
	LocalPort   string
	LocalProto  string
	RemoteHost  string
	RemotePort  string
	RemoteProto string
	Socks       bool
	Reverse     bool
	Stdio       bool
}

type configMsg struct {
	Version string
	Remotes []remote
}

// target is the channel extra data for this remote: host:port, /udp for UDP.
func (r remote) target() string {
	t := net.JoinHostPort(r.RemoteHost, r.RemotePort)
	if r.RemoteProto == "udp" {
		t += "/udp"
	}
	return t
}

// parseRemote reads the reverse forms of chisel's remote grammar:
// R:[local-host:]local-port:remote-host:remote-port[/udp], with IPv6
// addresses in brackets. Forward remotes are not needed by the tests.
func parseRemote(text string) (remote, error) {
	r := remote{LocalHost: "0.0.0.0", LocalProto: "tcp", RemoteProto: "tcp", Reverse: true}
	body := strings.TrimPrefix(text, "R:")
	if body == text {
		return r, fmt.Errorf("remote %q: only reverse remotes (R:...) are supported", text)
	}
	if strings.HasSuffix(body, "/udp") {
		body = strings.TrimSuffix(body, "/udp")
		r.LocalProto, r.RemoteProto = "udp", "udp"
	} else {
		body = strings.TrimSuffix(body, "/tcp")
	}
	parts, err := splitHosts(body)
	if err != nil {
		return r, fmt.Errorf("remote %q: %v", text, err)
	}
	switch len(parts) {
	case 3:
		r.LocalPort, r.RemoteHost, r.RemotePort = parts[0], parts[1], parts[2]
	case 4:
		r.LocalHost, r.LocalPort, r.RemoteHost, r.RemotePort = parts[0], parts[1], parts[2], parts[3]
	default:
		return r, fmt.Errorf("remote %q: want R:[local-host:]local-port:remote-host:remote-port", text)
	}
	return r, nil
}

// splitHosts splits on ':' outside of [brackets] and removes the brackets.
func splitHosts(s string) ([]string, error) {
	var parts []string
	depth, start := 0, 0
	for i, c := range s {
		switch c {
		case '[':
			depth++
		case ']':
			depth--
		case ':':
			if depth == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced brackets")
	}
	parts = append(parts, s[start:])
	for i, p := range parts {
		parts[i] = strings.TrimSuffix(strings.TrimPrefix(p, "["), "]")
	}
	return parts, nil
}

func encodeConfig(version string, remotes []remote) []byte {
	data, err := json.Marshal(configMsg{Version: version, Remotes: remotes})
	if err != nil {
		panic(err)
	}
	return data
}

// checkPort is chisel's own check of a port field: strconv.Atoi.
func checkPort(field, value string) error {
	n, err := strconv.Atoi(value)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%s %q is not a port", field, value)
	}
	return nil
}
