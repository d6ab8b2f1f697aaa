namespace Ferry.Quic.Tests;

/// <summary>Unreliable datagrams (RFC 9221) on an established connection.</summary>
public sealed class DatagramTests : QuicTestBase
{
    [Fact]
    public async Task Datagrams_travel_both_ways()
    {
        var (client, server) = await ConnectAsync();
        Assert.InRange(client.MaxDatagramPayloadSize, 1100, 1500);

        for (int i = 0; i < 50; i++)
        {
            var payload = new byte[1 + (i * 20)];
            new Random(i).NextBytes(payload);
            payload[0] = (byte)i;
            var echoed = await RoundTripAsync(client, server, payload);
            Assert.Equal(payload, echoed);
        }
    }

    [Fact]
    public async Task Oversized_datagram_is_refused_up_front()
    {
        var (client, _) = await ConnectAsync();
        var ex = Assert.Throws<ArgumentException>(() => client.SendDatagram(new byte[client.MaxDatagramPayloadSize + 1]));
        Assert.Contains("fit", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Datagrams_are_refused_when_the_peer_disabled_them()
    {
        var (client, server) = await ConnectAsync(options: new QuicConnectionOptions { MaxDatagramFrameSize = 0 });
        Assert.Equal(0, server.MaxDatagramPayloadSize);
        Assert.Throws<InvalidOperationException>(() => server.SendDatagram(new byte[10]));
        Assert.True(client.MaxDatagramPayloadSize > 0);
    }

    private static async Task<byte[]> RoundTripAsync(QuicConnection client, QuicConnection server, byte[] payload)
    {
        // Datagrams may be lost by design; resend a few times instead of assuming loopback never drops.
        for (int attempt = 0; attempt < 5; attempt++)
        {
            client.SendDatagram(payload);
            try
            {
                var got = await server.ReceiveDatagramAsync(Ct).AsTask().WaitAsync(TimeSpan.FromSeconds(2), Ct);
                if (got[0] != payload[0])
                {
                    continue; // a late duplicate of an earlier round
                }

                server.SendDatagram(got);
                for (int stale = 0; stale < 10; stale++)
                {
                    var echoed = await client.ReceiveDatagramAsync(Ct).AsTask().WaitAsync(TimeSpan.FromSeconds(2), Ct);
                    if (echoed[0] == payload[0])
                    {
                        return echoed;
                    }
                }
            }
            catch (TimeoutException)
            {
            }
        }

        throw new TimeoutException("datagram never made the round trip");
    }
}
