using System.Net;
using Microsoft.Extensions.Logging;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Quic;

/// <summary>TLS 1.3 settings of one side of a connection: own certificate, trusted CA, ALPN.</summary>
public sealed class QuicTlsOptions
{
    /// <summary>This side's certificate with its private key (ECDSA or RSA); null to present none.</summary>
    public X509Certificate2? Certificate { get; init; }

    /// <summary>Intermediate CA certificates sent after <see cref="Certificate"/>, leaf side first.</summary>
    public IReadOnlyList<X509Certificate2> IntermediateCertificates { get; init; } = [];

    /// <summary>The CA the peer's certificate chain must lead to. Required: Ferry never skips peer verification.</summary>
    public required X509Certificate2 TrustedCa { get; init; }

    /// <summary>ALPN protocols offered or accepted, in order of preference.</summary>
    public IReadOnlyList<string> ApplicationProtocols { get; init; } = ["ferry/1"];

    /// <summary>Server only: refuse clients that present no certificate (mutual TLS). Default true.</summary>
    public bool RequirePeerCertificate { get; init; } = true;

    /// <summary>Client only: SNI sent to the server (not checked against the certificate; identity is the Subject CN).</summary>
    public string? ServerName { get; init; }
}

/// <summary>Transport limits of a connection.</summary>
public sealed class QuicConnectionOptions
{
    /// <summary>Close the connection after this long without packets.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Send a PING when idle this long, so NAT bindings and the idle timer stay alive; null for none.</summary>
    public TimeSpan? KeepAliveInterval { get; init; }

    /// <summary>Give up a handshake after this long.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How many bidirectional streams the peer may have open at once.</summary>
    public int MaxInboundBidirectionalStreams { get; init; } = 100;

    /// <summary>How many unidirectional streams the peer may have open at once.</summary>
    public int MaxInboundUnidirectionalStreams { get; init; } = 10;

    /// <summary>Initial per-stream receive window in bytes (auto-tuned up to 16 MiB).</summary>
    public int StreamReceiveWindow { get; init; } = 1 << 20;

    /// <summary>Initial connection receive window in bytes (auto-tuned up to 32 MiB).</summary>
    public int ConnectionReceiveWindow { get; init; } = 4 << 20;

    /// <summary>Largest DATAGRAM frame (RFC 9221) this side accepts; 0 disables receiving datagrams.</summary>
    public int MaxDatagramFrameSize { get; init; } = 65535;

    /// <summary>Received datagrams kept for ReceiveDatagramAsync before the oldest are dropped.</summary>
    public int DatagramReceiveQueueLength { get; init; } = 1024;

    /// <summary>Bytes a stream buffers for sending before WriteAsync waits for acknowledgements.</summary>
    public int StreamSendBufferSize { get; init; } = 2 << 20;

    /// <summary>ngtcp2's congestion controller. Cubic halves its window on every loss; BBR paces to the measured bandwidth, which holds up far better on lossy paths.</summary>
    public QuicCongestionControl CongestionControl { get; init; } = QuicCongestionControl.Cubic;

    internal static QuicConnectionOptions Default { get; } = new();
}

/// <summary>Where an endpoint binds and whether it accepts connections.</summary>
public sealed class QuicEndpointOptions
{
    /// <summary>Local address to bind; port 0 picks one.</summary>
    public IPEndPoint LocalEndPoint { get; init; } = new(IPAddress.Loopback, 0);

    /// <summary>TLS settings used for incoming connections; null means this endpoint only initiates.</summary>
    public QuicTlsOptions? ServerTls { get; init; }

    /// <summary>Transport settings of incoming connections.</summary>
    public QuicConnectionOptions ServerConnectionOptions { get; init; } = new();

    /// <summary>
    /// Secret (at least 16 bytes) from which stateless reset tokens are derived. Keep it stable across restarts of
    /// the same node so that peers of a restarted node learn at once that their connection is gone; null picks a
    /// random one.
    /// </summary>
    public byte[]? StatelessResetKey { get; init; }

    /// <summary>
    /// Answer each new client with a Retry first (RFC 9000 §8.1), so no connection state is created for a spoofed
    /// source address. Costs one round trip per connection.
    /// </summary>
    public bool ValidateClientAddresses { get; init; }

    /// <summary>Where the endpoint and its connections log; null for no logging.</summary>
    public ILogger? Logger { get; init; }

    /// <summary>Handshaken connections waiting in AcceptConnectionAsync before new ones are refused.</summary>
    public int AcceptQueueLength { get; init; } = 64;

    /// <summary>Test hook: use the portable socket loops instead of Linux recvmmsg/sendmmsg.</summary>
    internal bool DisableBatchedIo { get; init; }
}

/// <summary>The congestion controllers ngtcp2 0.12 offers.</summary>
public enum QuicCongestionControl
{
    Cubic,
    Reno,
    Bbr,
    Bbr2,
}
