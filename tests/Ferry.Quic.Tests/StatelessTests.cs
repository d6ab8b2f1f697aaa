using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Quic.Tests;

/// <summary>Replies an endpoint sends without connection state: stateless reset and version negotiation.</summary>
public sealed class StatelessTests : IAsyncDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);
    private readonly TestPki _pki = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_restarted_server_resets_old_connections_at_once()
    {
        Assert.SkipUnless(QuicSupport.IsSupported, QuicSupport.NotSupportedReason ?? "");
        var resetKey = new byte[32];
        new Random(1).NextBytes(resetKey);
        QuicEndpoint Bind(int port) => QuicEndpoint.Bind(new QuicEndpointOptions
        {
            LocalEndPoint = new IPEndPoint(IPAddress.Loopback, port),
            ServerTls = new QuicTlsOptions { Certificate = _pki.Issue("server.ferry"), TrustedCa = _pki.Ca },
            StatelessResetKey = resetKey,
        });

        var server = Bind(0);
        var port = server.LocalEndPoint.Port;
        await using var clientEndpoint = QuicEndpoint.Bind(new QuicEndpointOptions());
        var accept = server.AcceptConnectionAsync(Ct).AsTask();
        await using var client = await clientEndpoint.ConnectAsync(server.LocalEndPoint,
            new QuicTlsOptions { Certificate = _pki.Issue("client.ferry"), TrustedCa = _pki.Ca }, null, Ct).AsTask().WaitAsync(Timeout, Ct);
        _ = await accept.WaitAsync(Timeout, Ct);

        // The server "crashes": its closing packets never leave, and a new process binds the same port.
        server.SendFilter = (_, _) => false;
        await server.DisposeAsync().AsTask().WaitAsync(Timeout, Ct);
        await using var restarted = Bind(port);

        try
        {
            // Anything the client sends now draws a reset; its own ACKs or probes may already have done so.
            await using var stream = await client.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
            await stream.WriteAsync(new byte[100], Ct).AsTask().WaitAsync(Timeout, Ct);
        }
        catch (QuicException)
        {
        }

        await client.Closed.WaitAsync(TimeSpan.FromSeconds(5), Ct); // far below the 30 s idle timeout
        var ex = await Assert.ThrowsAsync<QuicException>(() => client.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct));
        Assert.Contains("stateless reset", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Garbage_from_the_peer_address_does_not_hurt_the_connection()
    {
        Assert.SkipUnless(QuicSupport.IsSupported, QuicSupport.NotSupportedReason ?? "");
        await using var server = QuicEndpoint.Bind(new QuicEndpointOptions
        {
            ServerTls = new QuicTlsOptions { Certificate = _pki.Issue("server.ferry"), TrustedCa = _pki.Ca },
        });
        await using var clientEndpoint = QuicEndpoint.Bind(new QuicEndpointOptions());
        var accept = server.AcceptConnectionAsync(Ct).AsTask();
        await using var client = await clientEndpoint.ConnectAsync(server.LocalEndPoint,
            new QuicTlsOptions { Certificate = _pki.Issue("client.ferry"), TrustedCa = _pki.Ca }, null, Ct).AsTask().WaitAsync(Timeout, Ct);
        await using var serverConnection = await accept.WaitAsync(Timeout, Ct);

        // Short-header-looking datagrams with random CIDs and bodies, from the client's own socket.
        var random = new Random(8);
        for (int i = 0; i < 200; i++)
        {
            var junk = new byte[random.Next(21, 1300)];
            random.NextBytes(junk);
            junk[0] = (byte)(0x40 | (junk[0] & 0x3f));
            await clientEndpoint.SendNonQuicAsync(junk, server.LocalEndPoint, Ct).WaitAsync(Timeout, Ct);
        }

        await using var stream = await client.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        await stream.WriteAsync(new byte[] { 5 }, completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);
        await using var accepted = await serverConnection.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        Assert.Equal([5], await HandshakeTests.ReadAllAsync(accepted).WaitAsync(Timeout, Ct));
        Assert.False(client.Closed.IsCompleted);
    }

    [Fact]
    public async Task Address_validation_sends_a_retry_before_any_state()
    {
        Assert.SkipUnless(QuicSupport.IsSupported, QuicSupport.NotSupportedReason ?? "");
        await using var server = QuicEndpoint.Bind(new QuicEndpointOptions
        {
            ServerTls = new QuicTlsOptions { Certificate = _pki.Issue("server.ferry"), TrustedCa = _pki.Ca },
            ValidateClientAddresses = true,
        });
        int retries = 0;
        server.SendFilter = (d, _) =>
        {
            // Long header, QUIC v1 type bits 11 = Retry.
            if ((d.Span[0] & 0x80) != 0 && ((d.Span[0] >> 4) & 0x3) == 3)
            {
                Interlocked.Increment(ref retries);
            }

            return true;
        };
        await using var clientEndpoint = QuicEndpoint.Bind(new QuicEndpointOptions());
        var accept = server.AcceptConnectionAsync(Ct).AsTask();
        await using var client = await clientEndpoint.ConnectAsync(server.LocalEndPoint,
            new QuicTlsOptions { Certificate = _pki.Issue("client.ferry"), TrustedCa = _pki.Ca }, null, Ct).AsTask().WaitAsync(Timeout, Ct);
        await using var accepted = await accept.WaitAsync(Timeout, Ct);
        Assert.Equal(1, Volatile.Read(ref retries));

        await using var stream = await client.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        await stream.WriteAsync(new byte[] { 3 }, completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);
        await using var s = await accepted.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        Assert.Equal([3], await HandshakeTests.ReadAllAsync(s).WaitAsync(Timeout, Ct));
    }

    [Fact]
    public async Task An_unknown_version_gets_a_version_negotiation_offering_v1()
    {
        Assert.SkipUnless(QuicSupport.IsSupported, QuicSupport.NotSupportedReason ?? "");
        await using var server = QuicEndpoint.Bind(new QuicEndpointOptions
        {
            ServerTls = new QuicTlsOptions { Certificate = _pki.Issue("server.ferry"), TrustedCa = _pki.Ca },
        });
        using var udp = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));

        // Long header, version 0x1a2a3a4a (reserved for forcing negotiation), DCID 8 bytes, SCID 4 bytes, padded to 1200.
        var packet = new byte[1200];
        packet[0] = 0xC0;
        BinaryPrimitives.WriteUInt32BigEndian(packet.AsSpan(1), 0x1a2a3a4a);
        packet[5] = 8;
        new Random(4).NextBytes(packet.AsSpan(6, 8));
        packet[14] = 4;
        packet.AsSpan(15, 4).Fill(0xAB);
        await udp.SendAsync(packet, server.LocalEndPoint, Ct).AsTask().WaitAsync(Timeout, Ct);

        var reply = (await udp.ReceiveAsync(Ct).AsTask().WaitAsync(Timeout, Ct)).Buffer;
        Assert.True((reply[0] & 0x80) != 0);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(1)));
        Assert.Equal(4, reply[5]);                                // DCID = our SCID
        Assert.Equal(packet.AsSpan(15, 4).ToArray(), reply.AsSpan(6, 4).ToArray());
        var versions = reply.AsSpan(6 + 4 + 1 + reply[10]);
        Assert.Contains(1u, Enumerable.Range(0, versions.Length / 4).Select(i => BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(6 + 4 + 1 + reply[10] + (i * 4)))));
    }

    public ValueTask DisposeAsync()
    {
        _pki.Dispose();
        GC.SuppressFinalize(this);
        return ValueTask.CompletedTask;
    }
}
