using System.Net;
using System.Net.Sockets;
using Ferry.Client.Access;

namespace Ferry.UnitTests.Flows;

public sealed class EarlyApplicationDataTests : FlowTestBase
{
    [Fact]
    public async Task Bytes_sent_before_the_reply_go_to_the_flow_at_once_and_later_ones_through_the_application_side()
    {
        await using var pair = await SocketPair.CreateAsync(Token);
        await using var early = new EarlyApplicationData(pair.ForwardSide);
        var (flow, far) = DuplexStreams.CreatePair();

        await early.AttachAsync(flow, Token);
        await pair.Application.SendAsync("GET / HTTP/1.1\r\n"u8.ToArray(), Token);
        Assert.Equal("GET / HTTP/1.1\r\n"u8.ToArray(), await ReadExactlyAsync(far, 16));

        await early.DetachAsync(opened: true);
        await pair.Application.SendAsync("Host: x\r\n"u8.ToArray(), Token);
        pair.Application.Shutdown(SocketShutdown.Send);
        // The application side hands over what the flow has not carried yet: nothing of the first request line, all of the rest.
        Assert.Equal("Host: x\r\n"u8.ToArray(), await FlowTestSupport.ReadToEndAsync(early.Application, Token));
        Assert.Equal(16, early.SentEarly);
    }

    [Fact]
    public async Task A_flow_that_moves_to_another_connector_gets_every_early_byte_again_and_the_new_ones()
    {
        await using var pair = await SocketPair.CreateAsync(Token);
        await using var early = new EarlyApplicationData(pair.ForwardSide);
        var (first, firstFar) = DuplexStreams.CreatePair();
        var (second, secondFar) = DuplexStreams.CreatePair();

        await early.AttachAsync(first, Token);
        await pair.Application.SendAsync("abc"u8.ToArray(), Token);
        Assert.Equal("abc"u8.ToArray(), await ReadExactlyAsync(firstFar, 3));
        await early.DetachAsync(opened: false);

        await early.AttachAsync(second, Token);
        Assert.Equal("abc"u8.ToArray(), await ReadExactlyAsync(secondFar, 3));
        await pair.Application.SendAsync("def"u8.ToArray(), Token);
        Assert.Equal("def"u8.ToArray(), await ReadExactlyAsync(secondFar, 3));
        await early.DetachAsync(opened: true);
        // What the copy will not count: the bytes the flow that opened carried, not those sent to the connector that failed.
        Assert.Equal(6, early.SentEarly);

        pair.Application.Shutdown(SocketShutdown.Send);
        Assert.Empty(await FlowTestSupport.ReadToEndAsync(early.Application, Token));
    }

    [Fact]
    public async Task Bytes_read_after_the_reply_are_not_lost_and_a_silent_application_is_simply_waited_for()
    {
        await using var pair = await SocketPair.CreateAsync(Token);
        await using var early = new EarlyApplicationData(pair.ForwardSide);
        var (flow, far) = DuplexStreams.CreatePair();
        await early.AttachAsync(flow, Token);
        await early.DetachAsync(opened: true);

        // Server-speaks-first protocols: nothing comes from the application until it has heard the server.
        var read = early.Application.ReadAsync(new byte[64], Token).AsTask();
        Assert.False(read.IsCompleted);
        await pair.Application.SendAsync("late"u8.ToArray(), Token);
        var n = await read.WaitAsync(FlowTestSupport.Bound, Token);
        Assert.Equal(4, n);

        flow.CompleteWrites();
        Assert.Empty(await FlowTestSupport.ReadToEndAsync(far, Token));
    }

    [Fact]
    public async Task At_most_the_capacity_is_sent_early_and_the_rest_follows_in_order()
    {
        await using var pair = await SocketPair.CreateAsync(Token);
        var payload = FlowTestSupport.RandomBytes(40 * 1024, seed: 7);
        await pair.Application.SendAsync(payload, Token);
        pair.Application.Shutdown(SocketShutdown.Send);
        await using var early = new EarlyApplicationData(pair.ForwardSide);
        var (flow, far) = DuplexStreams.CreatePair();

        await early.AttachAsync(flow, Token);
        var sentEarly = await ReadExactlyAsync(far, EarlyApplicationData.Capacity);
        await early.DetachAsync(opened: true);
        flow.CompleteWrites();
        // Nothing beyond the capacity went early: the reader stopped there instead of buffering the whole request.
        Assert.Empty(await FlowTestSupport.ReadToEndAsync(far, Token));

        var rest = await FlowTestSupport.ReadToEndAsync(early.Application, Token);
        Assert.Equal(payload, sentEarly.Concat(rest).ToArray());
    }

    private async Task<byte[]> ReadExactlyAsync(Stream stream, int count)
    {
        var buffer = new byte[count];
        await stream.ReadExactlyAsync(buffer, Token).AsTask().WaitAsync(FlowTestSupport.Bound, Token);
        return buffer;
    }

    /// <summary>A connected loopback TCP pair: the application's socket, and the forward's end as the port forward sees it.</summary>
    private sealed class SocketPair : IAsyncDisposable
    {
        private SocketPair(Socket application, NetworkStream forwardSide)
        {
            Application = application;
            ForwardSide = forwardSide;
        }

        public Socket Application { get; }

        public NetworkStream ForwardSide { get; }

        public static async Task<SocketPair> CreateAsync(CancellationToken ct)
        {
            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
            var application = await FlowTestSupport.ConnectAsync((IPEndPoint)listener.LocalEndPoint!, ct);
            var accepted = await listener.AcceptAsync(ct);
            return new SocketPair(application, new NetworkStream(accepted, ownsSocket: true));
        }

        public async ValueTask DisposeAsync()
        {
            Application.Dispose();
            await ForwardSide.DisposeAsync();
        }
    }
}
