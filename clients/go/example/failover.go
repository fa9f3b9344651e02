package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode"

	kvv1 "cairn/clients/go/gen/cairn/kv/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	// An endpoint gets an equal share of what is left of the budget, but never less than
	// this (unless less is left), so a first endpoint that accepts connections and never
	// answers cannot use up the time of the ones after it (cairn's own command does the same).
	minAttemptTimeout = 500 * time.Millisecond
	// The pause after a round in which no endpoint answered, doubling up to the maximum.
	firstRoundPause = 50 * time.Millisecond
	maxRoundPause   = time.Second

	// Trailers cairn puts on every error it answers (src/server/status.ts).
	errorCodeTrailer = "cairn-error-code"
	leaderIDTrailer  = "cairn-leader-id"
)

// connectFunc opens a KV client to one endpoint; close releases it.
type connectFunc func(endpoint string) (kv kvv1.KVClient, close func() error, err error)

// callFunc sends one request; it must pass opts on to the stub (they collect the trailers).
type callFunc func(ctx context.Context, kv kvv1.KVClient, opts ...grpc.CallOption) error

// dialer opens KV clients with the given transport: TLS (transportOption) or plaintext.
func dialer(transport grpc.DialOption) connectFunc {
	return func(endpoint string) (kvv1.KVClient, func() error, error) {
		conn, err := grpc.Dial(endpoint, transport)
		if err != nil {
			return nil, nil, err
		}
		return kvv1.NewKVClient(conn), conn.Close, nil
	}
}

// transportOption is TLS when -cacert or -cert is given (as cairn's --cacert, --cert, --key),
// else plaintext. WithInsecure is what the Debian grpc (1.33) offers; newer grpc also has
// insecure.NewCredentials(), and keeps this for all of 1.x.
func transportOption(cacert, certFile, keyFile string) (grpc.DialOption, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("-cert and -key go together (a client certificate needs its key)")
	}
	if cacert == "" && certFile == "" {
		return grpc.WithInsecure(), nil
	}
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if cacert != "" {
		pem, err := os.ReadFile(cacert)
		if err != nil {
			return nil, fmt.Errorf("-cacert: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-cacert %s holds no PEM certificate", cacert)
		}
		config.RootCAs = roots
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("-cert/-key: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(config)), nil
}

// endpointError is one endpoint's failure, with cairn's trailers when it answered.
type endpointError struct {
	endpoint string
	err      error
	trailer  metadata.MD
}

func (e *endpointError) Error() string {
	st, ok := status.FromError(e.err)
	if !ok {
		return fmt.Sprintf("%s: %v", e.endpoint, e.err)
	}
	text := fmt.Sprintf("%s from %s: %s", codeName(st.Code()), e.endpoint, st.Message())
	if code := e.trailer.Get(errorCodeTrailer); len(code) > 0 {
		text += fmt.Sprintf(" (%s %s", errorCodeTrailer, code[0])
		if leader := e.trailer.Get(leaderIDTrailer); len(leader) > 0 && leader[0] != "0" {
			text += fmt.Sprintf(", %s %s", leaderIDTrailer, leader[0])
		}
		text += ")"
	}
	return text
}

func (e *endpointError) Unwrap() error { return e.err }

// tryEndpoints sends call to the endpoints in order until one answers, moving on after an
// UNAVAILABLE or an endpoint that used up its share of the budget; any other error (bad
// input, say) is the answer. After the last endpoint it starts again from the first, after a
// pause (an election takes a second or so), until ctx's budget is spent; then the error says
// what each endpoint did last.
func tryEndpoints(ctx context.Context, endpoints []string, connect connectFunc, call callFunc) error {
	lastFailures := make([]string, len(endpoints))
	pause := firstRoundPause
	for round := 1; ; round++ {
		for i, endpoint := range endpoints {
			if ctx.Err() != nil {
				return budgetSpent(endpoints, lastFailures, round)
			}
			err := tryEndpoint(ctx, endpoint, attemptTimeout(ctx, len(endpoints)-i), connect, call)
			if err == nil {
				return nil
			}
			if ctx.Err() == nil && !worthTryingNext(err) {
				return err
			}
			lastFailures[i] = err.Error()
		}
		if !pauseFor(ctx, pause) {
			return budgetSpent(endpoints, lastFailures, round)
		}
		if pause *= 2; pause > maxRoundPause {
			pause = maxRoundPause
		}
	}
}

func budgetSpent(endpoints, lastFailures []string, rounds int) error {
	var text strings.Builder
	fmt.Fprintf(&text, "no endpoint answered within the time budget (rounds: %d): ", rounds)
	for i, endpoint := range endpoints {
		if i > 0 {
			text.WriteString("; ")
		}
		if lastFailures[i] == "" {
			fmt.Fprintf(&text, "%s: not tried", endpoint)
		} else {
			text.WriteString(lastFailures[i])
		}
	}
	return errors.New(text.String())
}

// pauseFor waits for d or until ctx is done; false when ctx is done.
func pauseFor(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func tryEndpoint(ctx context.Context, endpoint string, timeout time.Duration, connect connectFunc, call callFunc) error {
	kv, closeKV, err := connect(endpoint)
	if err != nil {
		return &endpointError{endpoint: endpoint, err: status.Error(codes.Unavailable, err.Error())}
	}
	defer closeKV()
	attemptCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var trailer metadata.MD
	if err := call(attemptCtx, kv, grpc.Trailer(&trailer)); err != nil {
		return &endpointError{endpoint: endpoint, err: err, trailer: trailer}
	}
	return nil
}

// attemptTimeout is this endpoint's share of what is left of ctx's budget.
func attemptTimeout(ctx context.Context, endpointsLeft int) time.Duration {
	deadline, ok := ctx.Deadline()
	if !ok {
		return defaultTimeout
	}
	left := time.Until(deadline)
	share := left / time.Duration(endpointsLeft)
	if share < minAttemptTimeout {
		share = minAttemptTimeout
	}
	if share > left {
		share = left
	}
	return share
}

// worthTryingNext: UNAVAILABLE means this node could not serve the request (down, no
// leader known, leader unreachable); a DEADLINE_EXCEEDED while the whole budget still has
// time (the caller checks) means only this endpoint's share ran out. A put carries its
// session, so sending it again after either applies it at most once.
func worthTryingNext(err error) bool {
	switch status.Code(errors.Unwrap(err)) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	default:
		return false
	}
}

// codeName spells a gRPC code as the protocol and cairn's messages do: DEADLINE_EXCEEDED.
func codeName(code codes.Code) string {
	var name strings.Builder
	previous := rune(0)
	for _, r := range code.String() {
		if unicode.IsUpper(r) && unicode.IsLower(previous) {
			name.WriteByte('_')
		}
		name.WriteRune(unicode.ToUpper(r))
		previous = r
	}
	return name.String()
}
