using System.Security.Authentication;
using System.Text;

namespace Ferry.Quic.Tests;

/// <summary>Mutual TLS between two Ferry endpoints.</summary>
public sealed class HandshakeTests : QuicTestBase
{
    [Fact]
    public async Task Handshake_exposes_peer_identity_and_alpn_and_echoes()
    {
        var (client, server) = await ConnectAsync();
        Assert.Equal("server.ferry", client.RemoteIdentity);
        Assert.Equal("client.ferry", server.RemoteIdentity);
        Assert.Equal("ferry/1", client.NegotiatedApplicationProtocol);
        Assert.Equal("ferry/1", server.NegotiatedApplicationProtocol);
        Assert.True(server.IsServer);
        Assert.False(client.IsServer);

        await using var stream = await client.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        await stream.WriteAsync(Encoding.UTF8.GetBytes("hello"), completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);

        await using var accepted = await server.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        Assert.Equal(stream.Id, accepted.Id);
        var received = await ReadAllAsync(accepted).WaitAsync(Timeout, Ct);
        Assert.Equal("hello", Encoding.UTF8.GetString(received));
        await accepted.WriteAsync(Encoding.UTF8.GetBytes("HELLO"), completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);

        Assert.Equal("HELLO", Encoding.UTF8.GetString(await ReadAllAsync(stream).WaitAsync(Timeout, Ct)));

        var stats = client.GetStatistics();
        Assert.InRange(stats.SmoothedRtt, TimeSpan.FromTicks(1), TimeSpan.FromSeconds(1));
        Assert.True(stats.CongestionWindow > 0);
        Assert.InRange(stats.MaxUdpPayloadSize, 1200, 1500);
    }

    [Fact]
    public async Task One_endpoint_accepts_and_initiates_on_the_same_socket()
    {
        // Two peers that both listen and both dial each other, as in peer-to-peer hole punching.
        QuicEndpoint Peer(string name) => Track(QuicEndpoint.Bind(new QuicEndpointOptions
        {
            LocalEndPoint = new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0),
            ServerTls = new QuicTlsOptions { Certificate = Pki.Issue(name), TrustedCa = Pki.Ca },
        }));
        var a = Peer("peer-a");
        var b = Peer("peer-b");
        var acceptA = a.AcceptConnectionAsync(Ct).AsTask();
        var acceptB = b.AcceptConnectionAsync(Ct).AsTask();
        var aToB = a.ConnectAsync(b.LocalEndPoint, ClientTls("peer-a"), null, Ct).AsTask();
        var bToA = b.ConnectAsync(a.LocalEndPoint, ClientTls("peer-b"), null, Ct).AsTask();

        var outbound = Track(await aToB.WaitAsync(Timeout, Ct));
        Track(await bToA.WaitAsync(Timeout, Ct));
        var inboundAtA = Track(await acceptA.WaitAsync(Timeout, Ct));
        var inboundAtB = Track(await acceptB.WaitAsync(Timeout, Ct));
        Assert.Equal("peer-b", outbound.RemoteIdentity);
        Assert.Equal("peer-b", inboundAtA.RemoteIdentity);
        Assert.Equal("peer-a", inboundAtB.RemoteIdentity);
        Assert.Equal(a.LocalEndPoint, outbound.LocalEndPoint);
        Assert.Equal(a.LocalEndPoint, inboundAtA.LocalEndPoint);

        await using var s = await outbound.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        await s.WriteAsync(new byte[] { 1, 2 }, completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);
        await using var r = await inboundAtB.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        Assert.Equal([1, 2], await ReadAllAsync(r).WaitAsync(Timeout, Ct));
    }

    [Fact]
    public async Task Connecting_to_nobody_times_out_with_a_clear_error()
    {
        int port;
        using (var probe = new System.Net.Sockets.UdpClient(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0)))
        {
            port = ((System.Net.IPEndPoint)probe.Client.LocalEndPoint!).Port;
        }

        var options = new QuicConnectionOptions { HandshakeTimeout = TimeSpan.FromSeconds(1) };
        var ex = await Assert.ThrowsAsync<QuicException>(() =>
            Client.ConnectAsync(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, port), ClientTls(), options, Ct).AsTask().WaitAsync(Timeout, Ct));
        Assert.Equal(QuicError.ConnectionTimeout, ex.Error);
    }

    [Fact]
    public async Task Works_over_ipv6_loopback()
    {
        Assert.SkipUnless(CanBindIPv6Loopback(), "::1 is not available on this machine (IPv6 disabled)");
        await using var server = QuicEndpoint.Bind(new QuicEndpointOptions
        {
            LocalEndPoint = new System.Net.IPEndPoint(System.Net.IPAddress.IPv6Loopback, 0),
            ServerTls = new QuicTlsOptions { Certificate = Pki.Issue("server6"), TrustedCa = Pki.Ca },
        });
        await using var client = QuicEndpoint.Bind(new QuicEndpointOptions { LocalEndPoint = new System.Net.IPEndPoint(System.Net.IPAddress.IPv6Loopback, 0) });
        var accept = server.AcceptConnectionAsync(Ct).AsTask();
        await using var connection = await client.ConnectAsync(server.LocalEndPoint, ClientTls(), null, Ct).AsTask().WaitAsync(Timeout, Ct);
        await using var accepted = await accept.WaitAsync(Timeout, Ct);
        Assert.Equal("server6", connection.RemoteIdentity);
        Assert.Equal(client.LocalEndPoint, accepted.RemoteEndPoint);

        await using var stream = await connection.OpenBidirectionalStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        await stream.WriteAsync(new byte[300_000], completeWrites: true, Ct).AsTask().WaitAsync(Timeout, Ct);
        await using var s = await accepted.AcceptStreamAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        Assert.Equal(300_000, (await ReadAllAsync(s).WaitAsync(Timeout, Ct)).Length);
    }

    [Fact]
    public async Task Certificates_issued_by_an_intermediate_ca_are_accepted_when_the_chain_is_sent()
    {
        using var intermediate = Pki.IssueIntermediate("Ferry Intermediate");
        await using var server = QuicEndpoint.Bind(new QuicEndpointOptions
        {
            ServerTls = new QuicTlsOptions
            {
                Certificate = TestPki.Issue("chained.server", intermediate),
                IntermediateCertificates = [intermediate],
                TrustedCa = Pki.Ca,
            },
        });
        var tls = new QuicTlsOptions { Certificate = TestPki.Issue("chained.client", intermediate), IntermediateCertificates = [intermediate], TrustedCa = Pki.Ca };
        var accept = server.AcceptConnectionAsync(Ct).AsTask();
        var client = Track(await Client.ConnectAsync(server.LocalEndPoint, tls, null, Ct).AsTask().WaitAsync(Timeout, Ct));
        var accepted = Track(await accept.WaitAsync(Timeout, Ct));
        Assert.Equal("chained.server", client.RemoteIdentity);
        Assert.Equal("chained.client", accepted.RemoteIdentity);

        // Without the intermediate the root alone cannot vouch for the leaf.
        var bare = new QuicTlsOptions { Certificate = TestPki.Issue("bare.client", intermediate), TrustedCa = Pki.Ca };
        await Assert.ThrowsAsync<AuthenticationException>(() => Client.ConnectAsync(server.LocalEndPoint, bare, null, Ct).AsTask().WaitAsync(Timeout, Ct));
    }

    [Fact]
    public async Task Client_certificate_from_another_ca_is_refused()
    {
        using var other = new TestPki("Other CA");
        var tls = new QuicTlsOptions { Certificate = other.Issue("intruder"), TrustedCa = Pki.Ca };
        var ex = await Assert.ThrowsAsync<AuthenticationException>(() => Client.ConnectAsync(Server.LocalEndPoint, tls, null, Ct).AsTask().WaitAsync(Timeout, Ct));
        TestContext.Current.TestOutputHelper?.WriteLine(ex.Message);
        Assert.Contains("alert", ex.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Handshake_outcomes_are_logged_on_the_server()
    {
        var log = new ListLogger();
        await using var server = QuicEndpoint.Bind(new QuicEndpointOptions
        {
            ServerTls = new QuicTlsOptions { Certificate = Pki.Issue("logged.server"), TrustedCa = Pki.Ca },
            Logger = log,
        });
        var accept = server.AcceptConnectionAsync(Ct).AsTask();
        Track(await Client.ConnectAsync(server.LocalEndPoint, ClientTls("good.client"), null, Ct).AsTask().WaitAsync(Timeout, Ct));
        Track(await accept.WaitAsync(Timeout, Ct));
        await Assert.ThrowsAsync<AuthenticationException>(() =>
            Client.ConnectAsync(server.LocalEndPoint, new QuicTlsOptions { TrustedCa = Pki.Ca }, null, Ct).AsTask().WaitAsync(Timeout, Ct));

        Assert.Contains(log.Entries, e => e.Id.Id == 2 && e.Message.Contains("good.client", StringComparison.Ordinal));
        Assert.Contains(log.Entries, e => e.Id.Id == 3 && e.Level == Microsoft.Extensions.Logging.LogLevel.Warning);
    }

    [Fact]
    public async Task Client_certificate_from_an_impostor_ca_with_the_same_name_is_refused()
    {
        // Same issuer name as the real CA, so the client does send it; only the server's signature check stops it.
        using var impostor = new TestPki("Ferry Test CA");
        var tls = new QuicTlsOptions { Certificate = impostor.Issue("client.ferry"), TrustedCa = Pki.Ca };
        var ex = await Assert.ThrowsAsync<AuthenticationException>(() => Client.ConnectAsync(Server.LocalEndPoint, tls, null, Ct).AsTask().WaitAsync(Timeout, Ct));
        TestContext.Current.TestOutputHelper?.WriteLine(ex.Message);
        Assert.Contains("refused", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Server_certificate_from_an_impostor_ca_with_the_same_name_is_refused()
    {
        using var impostor = new TestPki("Ferry Test CA");
        await using var fake = QuicEndpoint.Bind(new QuicEndpointOptions
        {
            ServerTls = new QuicTlsOptions { Certificate = impostor.Issue("server.ferry"), TrustedCa = Pki.Ca },
        });
        var ex = await Assert.ThrowsAsync<AuthenticationException>(() => Client.ConnectAsync(fake.LocalEndPoint, ClientTls(), null, Ct).AsTask().WaitAsync(Timeout, Ct));
        TestContext.Current.TestOutputHelper?.WriteLine(ex.Message);
        Assert.Contains("failed verification", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Client_without_certificate_is_refused()
    {
        var tls = new QuicTlsOptions { TrustedCa = Pki.Ca };
        var ex = await Assert.ThrowsAsync<AuthenticationException>(() => Client.ConnectAsync(Server.LocalEndPoint, tls, null, Ct).AsTask().WaitAsync(Timeout, Ct));
        TestContext.Current.TestOutputHelper?.WriteLine(ex.Message);
        Assert.Contains("alert", ex.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Server_certificate_from_another_ca_is_refused_by_client()
    {
        using var other = new TestPki("Other CA");
        var tls = new QuicTlsOptions { Certificate = Pki.Issue("client.ferry"), TrustedCa = other.Ca };
        var ex = await Assert.ThrowsAsync<AuthenticationException>(() => Client.ConnectAsync(Server.LocalEndPoint, tls, null, Ct).AsTask().WaitAsync(Timeout, Ct));
        TestContext.Current.TestOutputHelper?.WriteLine(ex.Message);
        Assert.Contains("not issued by the trusted CA", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Alpn_mismatch_is_refused()
    {
        var tls = new QuicTlsOptions { Certificate = Pki.Issue("client.ferry"), TrustedCa = Pki.Ca, ApplicationProtocols = ["h3"] };
        var ex = await Assert.ThrowsAsync<AuthenticationException>(() => Client.ConnectAsync(Server.LocalEndPoint, tls, null, Ct).AsTask().WaitAsync(Timeout, Ct));
        TestContext.Current.TestOutputHelper?.WriteLine(ex.Message);
        Assert.Contains("ALPN", ex.Message, StringComparison.Ordinal);
    }

    private static bool CanBindIPv6Loopback()
    {
        try
        {
            using var probe = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetworkV6, System.Net.Sockets.SocketType.Dgram, System.Net.Sockets.ProtocolType.Udp);
            probe.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.IPv6Loopback, 0));
            return true;
        }
        catch (System.Net.Sockets.SocketException)
        {
            return false;
        }
    }

    internal static async Task<byte[]> ReadAllAsync(Stream stream)
    {
        using var ms = new MemoryStream();
        var buffer = new byte[16384];
        for (int i = 0; i < 1_000_000; i++)
        {
            int n = await stream.ReadAsync(buffer, Ct);
            if (n == 0)
            {
                return ms.ToArray();
            }

            ms.Write(buffer, 0, n);
        }

        throw new InvalidOperationException("stream did not end");
    }
}
