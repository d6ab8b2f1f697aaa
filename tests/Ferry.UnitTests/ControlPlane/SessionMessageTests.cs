using System.Text;
using Ferry.Core.ControlPlane;

namespace Ferry.UnitTests.ControlPlane;

public sealed class SessionMessageTests
{
    [Fact]
    public void Messages_round_trip_with_their_type()
    {
        SessionMessage[] messages =
        [
            new ProbeMessage(3, 1234, 1000),
            new HelloMessage("h", ["10.0.0.1"], "1.0", 0, 5, 6, null),
            new RefusedMessage("clock-skew", "off by +10000 ms"),
            new ResourcesMessage([new ResourceGrant("rs_1", "db", "corp", "db.internal", "5432", "none")]),
            new TokensRotatedMessage("a", DateTimeOffset.UnixEpoch, "r"),
        ];
        foreach (var message in messages)
        {
            var text = SessionMessage.Serialize(message);
            var back = SessionMessage.Deserialize(Encoding.UTF8.GetBytes(text));
            Assert.NotNull(back);
            Assert.Equal(message.GetType(), back.GetType());
            Assert.Equal(text, SessionMessage.Serialize(back));
        }
    }

    [Theory]
    [InlineData("{\"type\":\"from-the-future\",\"x\":1}")]
    [InlineData("not json")]
    [InlineData("{\"seq\":1}")]
    [InlineData("")]
    public void Unknown_or_malformed_messages_are_skipped_not_thrown(string text)
        => Assert.Null(SessionMessage.Deserialize(Encoding.UTF8.GetBytes(text)));
}
