using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Ferry.Connector.Flows;
using Ferry.Core.Flows;

namespace Ferry.UnitTests.Flows;

public sealed class DnsServerResolverTests : FlowTestBase
{
    [Fact]
    public async Task Answers_come_back_IPv4_first()
    {
        await using var dns = new StubDnsServer((name, type) => name == "db.corp.internal"
            ? (0, type == 1 ? [IPAddress.Parse("10.1.2.3")] : [IPAddress.Parse("fd00::5")])
            : (3, []));
        var resolver = new DnsServerResolver(dns.EndPoint, TimeSpan.FromSeconds(2));

        var resolution = await resolver.ResolveAsync("db.corp.internal", Token).WaitAsync(FlowTestSupport.Bound, Token);

        Assert.True(resolution.IsFound, resolution.Message);
        Assert.Equal([IPAddress.Parse("10.1.2.3"), IPAddress.Parse("fd00::5")], resolution.Addresses);
    }

    [Fact]
    public async Task NXDOMAIN_is_NameNotFound_and_names_the_server()
    {
        await using var dns = new StubDnsServer((_, _) => (3, []));
        var resolver = new DnsServerResolver(dns.EndPoint, TimeSpan.FromSeconds(2));

        var resolution = await resolver.ResolveAsync("missing.corp.internal", Token).WaitAsync(FlowTestSupport.Bound, Token);

        Assert.Equal(FlowStatus.NameNotFound, resolution.Status);
        Assert.Contains("NXDOMAIN", resolution.Message, StringComparison.Ordinal);
        Assert.Contains(dns.EndPoint.ToString(), resolution.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_name_without_records_is_NameNotFound()
    {
        await using var dns = new StubDnsServer((_, _) => (0, []));
        var resolver = new DnsServerResolver(dns.EndPoint, TimeSpan.FromSeconds(2));
        var resolution = await resolver.ResolveAsync("empty.corp.internal", Token).WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(FlowStatus.NameNotFound, resolution.Status);
        Assert.Contains("no A or AAAA records", resolution.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_silent_server_is_a_Timeout()
    {
        await using var dns = new StubDnsServer(null);
        var resolver = new DnsServerResolver(dns.EndPoint, TimeSpan.FromMilliseconds(200));
        var resolution = await resolver.ResolveAsync("db.corp.internal", Token).WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(FlowStatus.Timeout, resolution.Status);
        Assert.Contains("did not answer", resolution.Message, StringComparison.Ordinal);
    }

    /// <summary>A UDP DNS server on loopback answering A (type 1) and AAAA (type 28) questions from a function; null stays silent.</summary>
    private sealed class StubDnsServer : IAsyncDisposable
    {
        private readonly Socket _socket = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _serving;

        public StubDnsServer(Func<string, ushort, (byte Rcode, IPAddress[] Answers)>? answer)
        {
            _socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            EndPoint = (IPEndPoint)_socket.LocalEndPoint!;
            _serving = ServeAsync(answer);
        }

        public IPEndPoint EndPoint { get; }

        private async Task ServeAsync(Func<string, ushort, (byte Rcode, IPAddress[] Answers)>? answer)
        {
            var buffer = new byte[1500];
            while (!_stop.IsCancellationRequested)
            {
                SocketReceiveFromResult received;
                try
                {
                    received = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(IPAddress.Any, 0), _stop.Token);
                }
                catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
                {
                    return;
                }
                if (answer is null || received.ReceivedBytes < 17)
                {
                    continue;
                }
                var query = buffer.AsSpan(0, received.ReceivedBytes);
                var name = new StringBuilder();
                var offset = 12;
                while (offset < query.Length && query[offset] != 0)
                {
                    int length = query[offset];
                    name.Append(name.Length > 0 ? "." : "").Append(Encoding.ASCII.GetString(query.Slice(offset + 1, length)));
                    offset += 1 + length;
                }
                var type = BinaryPrimitives.ReadUInt16BigEndian(query[(offset + 1)..]);
                var questionEnd = offset + 5;
                var (rcode, answers) = answer(name.ToString(), type);
                var matching = answers.Where(a => (a.AddressFamily == AddressFamily.InterNetwork) == (type == 1)).ToArray();

                var response = new List<byte>();
                response.AddRange(query[..2].ToArray());
                response.Add((byte)(0x80 | (query[2] & 0x01)));
                response.Add((byte)(0x80 | rcode));
                response.AddRange(new byte[] { 0, 1, 0, (byte)matching.Length, 0, 0, 0, 0 });
                response.AddRange(query[12..questionEnd].ToArray());
                foreach (var address in matching)
                {
                    var data = address.GetAddressBytes();
                    response.AddRange(new byte[] { 0xC0, 0x0C, 0, (byte)type, 0, 1, 0, 0, 0, 60, 0, (byte)data.Length });
                    response.AddRange(data);
                }
                try
                {
                    await _socket.SendToAsync(response.ToArray(), SocketFlags.None, received.RemoteEndPoint, _stop.Token);
                }
                catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
                {
                    return;
                }
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _socket.Dispose();
            await _serving.WaitAsync(TimeSpan.FromSeconds(5));
            _stop.Dispose();
        }
    }
}
