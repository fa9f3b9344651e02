// Command cairn-example is a tiny cairn client built on the generated Go stubs:
//
//	cairn-example -endpoints 127.0.0.1:7001,127.0.0.1:7002 put KEY VALUE   # OK (revision N)
//	cairn-example -endpoints 127.0.0.1:7001,127.0.0.1:7002 get KEY         # VALUE
//	cairn-example -endpoints 127.0.0.1:7001 -cacert ca.pem get KEY          # over TLS (docs/security.md)
//
// It tries the endpoints in order and moves to the next one on UNAVAILABLE (or when an
// endpoint uses up its share of the time budget), starting again from the first until the
// budget (-timeout) is spent. Any node accepts any request: a follower
// forwards writes and linearizable reads to the leader. A put carries a client session
// (client_id, sequence 1), so trying it again at the next endpoint after an UNAVAILABLE
// whose outcome is unknown applies it at most once.
//
// Exit codes, as cairn's own command: 0 done; 1 failed or get found no key; 2 usage error.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	kvv1 "cairn/clients/go/gen/cairn/kv/v1"
	"google.golang.org/grpc"
)

const (
	// The local cluster's client ports (`cairn cluster` defaults), as cairn's own command uses.
	defaultEndpoints = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
	endpointsEnv     = "CAIRN_ENDPOINTS"
	// The whole command's budget, every endpoint included (cairn's --timeout-ms default).
	defaultTimeout = 5 * time.Second
	// At most 4 minutes, as cairn's --timeout-ms: a put is retried with its session only
	// while the cluster keeps the session's answers for certain (5 minutes, see kv.proto).
	maxTimeout = 4 * time.Minute

	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("cairn-example", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() { printUsage(flags) }
	endpointList := flags.String("endpoints", endpointsDefault(), "client endpoints HOST:PORT,..., tried in order; $"+endpointsEnv+" sets the default")
	timeout := flags.Duration("timeout", defaultTimeout, "budget of the whole command, every endpoint included")
	cacert := flags.String("cacert", "", "TLS: PEM CA bundle that verifies the nodes' certificates")
	certFile := flags.String("cert", "", "TLS: a client certificate (PEM), for nodes started with --client-ca-file")
	keyFile := flags.String("key", "", "TLS: the client certificate's private key (PEM)")
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	endpoints, err := parseEndpoints(*endpointList)
	if err == nil && (*timeout <= 0 || *timeout > maxTimeout) {
		err = fmt.Errorf("-timeout must be above 0 and at most %v, got %v", maxTimeout, *timeout)
	}
	var transport grpc.DialOption
	if err == nil {
		transport, err = transportOption(*cacert, *certFile, *keyFile)
	}
	if err != nil {
		fmt.Fprintln(stderr, "cairn-example:", err)
		return exitUsage
	}
	connect := dialer(transport)

	verb, verbArgs := flags.Arg(0), flags.Args()
	if len(verbArgs) > 0 {
		verbArgs = verbArgs[1:]
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	switch {
	case verb == "put" && len(verbArgs) == 2:
		return put(ctx, endpoints, connect, []byte(verbArgs[0]), []byte(verbArgs[1]), stdout, stderr)
	case verb == "get" && len(verbArgs) == 1:
		return get(ctx, endpoints, connect, verbArgs[0], stdout, stderr)
	default:
		printUsage(flags)
		return exitUsage
	}
}

func printUsage(flags *flag.FlagSet) {
	out := flags.Output()
	fmt.Fprintln(out, "usage: cairn-example [-endpoints HOST:PORT,...] [-timeout 5s] [-cacert FILE [-cert FILE -key FILE]] put KEY VALUE")
	fmt.Fprintln(out, "       cairn-example [-endpoints HOST:PORT,...] [-timeout 5s] [-cacert FILE [-cert FILE -key FILE]] get KEY")
	flags.PrintDefaults()
}

func endpointsDefault() string {
	if fromEnv := os.Getenv(endpointsEnv); fromEnv != "" {
		return fromEnv
	}
	return defaultEndpoints
}

// parseEndpoints refuses an endpoint without a port: cairn has no default client port.
func parseEndpoints(list string) ([]string, error) {
	var endpoints []string
	for _, endpoint := range strings.Split(list, ",") {
		endpoint = strings.TrimSpace(endpoint)
		if endpoint == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(endpoint); err != nil || port == "" {
			return nil, fmt.Errorf("endpoint %q is not HOST:PORT", endpoint)
		}
		endpoints = append(endpoints, endpoint)
	}
	if len(endpoints) == 0 {
		return nil, errors.New("-endpoints names no endpoint")
	}
	return endpoints, nil
}

func put(ctx context.Context, endpoints []string, connect connectFunc, key, value []byte, stdout, stderr io.Writer) int {
	clientID, err := newClientID()
	if err != nil {
		fmt.Fprintln(stderr, "cairn-example: put:", err)
		return exitFailed
	}
	// The same request goes to every endpoint tried: one session, one sequence.
	request := &kvv1.PutRequest{
		Key:                      key,
		Value:                    value,
		ClientId:                 clientID,
		Sequence:                 1,
		LowestUnansweredSequence: 1,
	}
	var response *kvv1.PutResponse
	err = tryEndpoints(ctx, endpoints, connect, func(ctx context.Context, kv kvv1.KVClient, opts ...grpc.CallOption) (err error) {
		response, err = kv.Put(ctx, request, opts...)
		return err
	})
	if err != nil {
		fmt.Fprintln(stderr, "cairn-example: put:", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "OK (revision %d)\n", response.GetHeader().GetRevision())
	return exitOK
}

func get(ctx context.Context, endpoints []string, connect connectFunc, key string, stdout, stderr io.Writer) int {
	request := &kvv1.GetRequest{Key: []byte(key), Consistency: kvv1.Consistency_CONSISTENCY_LINEARIZABLE}
	var response *kvv1.GetResponse
	err := tryEndpoints(ctx, endpoints, connect, func(ctx context.Context, kv kvv1.KVClient, opts ...grpc.CallOption) (err error) {
		response, err = kv.Get(ctx, request, opts...)
		return err
	})
	if err != nil {
		fmt.Fprintln(stderr, "cairn-example: get:", err)
		return exitFailed
	}
	if response.GetKv() == nil {
		fmt.Fprintf(stdout, "(not found: %s)\n", key)
		return exitFailed
	}
	stdout.Write(response.GetKv().GetValue())
	fmt.Fprintln(stdout)
	return exitOK
}

// newClientID names this run's client session; random, so two runs never share one.
func newClientID() (string, error) {
	random := make([]byte, 16)
	if _, err := rand.Read(random); err != nil {
		return "", fmt.Errorf("no random client id: %w", err)
	}
	return "cairn-example-" + hex.EncodeToString(random), nil
}
